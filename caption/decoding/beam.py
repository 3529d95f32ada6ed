"""Beam search for any ``Decoder``, batched across items.

All beams of all items live in one (B * K) batch: one decoder step per word for the whole batch, with
no Python loop over items. An item whose beams have all ended leaves the batch, so a batch costs what its
captions need, not max_length steps for every item. ``beam_size=1`` is greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caption.config import DecodingConfig
from caption.data.vocab import SpecialTokens
from caption.decoding.constraints import allowed_logits
from caption.models.base import Decoder, Parents


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <bos> and <eos>
    log_prob: float  # sum of the log-probabilities of the words and <eos>
    score: float  # log_prob / length ** length_penalty, which ranks the beams
    attention: np.ndarray  # (len(tokens), N): where the decoder looked for each word


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    features: torch.Tensor,
    mask: torch.Tensor | None,
    decoding: DecodingConfig,
    special: SpecialTokens,
) -> list[list[Hypothesis]]:
    """Decode ``features`` (B, N, C); returns, per item, ``decoding.beam_size`` hypotheses best first.

    Hypotheses are ranked by log-probability divided by length ** ``length_penalty`` (0 turns length
    normalisation off). A caption has at most ``max_length`` words; a beam still open then is ended.
    What a caption may never say is removed (``allowed_logits``).
    """
    B, N, _ = features.shape
    K, max_length, length_penalty = decoding.beam_size, decoding.max_length, decoding.length_penalty
    V = decoder.vocab_size
    device = features.device
    eos_id = special.eos

    memory, state = decoder.init_state(features, mask)  # (B, ...): one initial state per item
    tokens = torch.full((B * K,), special.bos, dtype=torch.long, device=device)  # (B*K,)
    items = torch.arange(B, device=device)  # (B,)
    # The K beams of an item all start from its one initial state.
    parents = Parents(rows=items, items=items, slots=torch.zeros_like(items),
                      of_beam=items.repeat_interleave(K))

    # State of the b items still decoding; `items` (b,) names them. An item leaves the batch once all of
    # its beams have ended, and its final scores move to the (B, K) tensors below. The state stays as the
    # last step left it: `parents` picks the rows that beams extend.
    log_probs = torch.zeros(B, K, device=device)  # (b, K)
    log_probs[:, 1:] = float("-inf")  # all beams start identical: keep one
    lengths = torch.zeros(B, K, device=device)  # (b, K) tokens emitted, <eos> included
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)  # (b, K)
    final_log_probs, final_lengths = log_probs.clone(), lengths.clone()  # (B, K) each
    # A finished beam can only "emit" <eos> again, at no cost, so it keeps its place and score.
    done_row = torch.full((V,), float("-inf"), device=device)  # (V,)
    done_row[eos_id] = 0.0
    beam_ids = torch.arange(K, device=device)  # (K,)
    row_offsets = (torch.arange(B, device=device) * K).unsqueeze(1)  # (B, 1) first row of each batch row
    # Back-pointers: after step t, beam j of batch row r extends beam back[t][r, j] with words[t][r, j];
    # step_items[t] names the item of each row.
    back, words, alphas, step_items = [], [], [], []

    for t in range(max_length + 1):
        b = len(items)
        logits, state, alpha = decoder.beam_step(tokens, state, parents, memory)  # (b*K, V), ..., (b*K, N)
        step = allowed_logits(logits.unsqueeze(1), special, t).log_softmax(dim=-1).view(b, K, V)  # (b, K, V)
        if t == max_length:  # out of words: every open beam must end here
            step = done_row.expand(b, K, V) + step[..., eos_id : eos_id + 1]
        # torch.where: a mask index would sync on CUDA
        step = torch.where(finished.unsqueeze(-1), done_row, step)  # (b, K, V)
        candidates = step.add_(log_probs.unsqueeze(-1))  # (b, K, V)
        new_lengths = (lengths + (~finished).float()).unsqueeze(-1)  # (b, K, 1)
        ranked = candidates / new_lengths.clamp(min=1) ** length_penalty  # (b, K, V)
        _, best = ranked.view(b, K * V).topk(K, dim=1)  # (b, K)
        parent = best // V  # (b, K) beam each survivor extends
        word = best % V  # (b, K)

        log_probs = candidates.view(b, K * V).gather(1, best)  # (b, K)
        was_finished = finished.gather(1, parent)  # (b, K)
        lengths = lengths.gather(1, parent) + (~was_finished).float()  # (b, K)
        finished = was_finished | (word == eos_id)  # (b, K)
        rows = (row_offsets[:b] + parent).view(-1)  # (b*K,) each parent's row
        tokens = word.view(-1)  # (b*K,)
        back.append(parent)
        words.append(word)
        # where each new beam's word looked
        alphas.append(alpha.index_select(0, rows).view(b, K, N).float())  # (b, K, N)
        step_items.append(items)

        going = ~finished.all(dim=1)  # (b,) items with a beam still open
        still = int(going.sum())  # a host-device sync, as is torch.unique below
        if still < b:
            done = (~going).nonzero().squeeze(1)  # (d,)
            final_log_probs[items[done]], final_lengths[items[done]] = log_probs[done], lengths[done]
            if still == 0:
                break
            keep = going.nonzero().squeeze(1)  # (b',)
            keep_rows = (keep.unsqueeze(1) * K + beam_ids).view(-1)  # (b'*K,)
            items = items[keep]  # (b',)
            memory = memory.select(keep)  # (b', ...)
            log_probs, lengths, finished = log_probs[keep], lengths[keep], finished[keep]  # (b', K) each
            rows, tokens = rows[keep_rows], tokens[keep_rows]  # (b'*K,) each
        # Only open beams go on; a finished one's step is discarded, so it may point at any parent.
        open_beams = ~finished.view(-1)  # (b'*K,)
        parent_rows, parent_of_open = torch.unique(rows[open_beams], return_inverse=True)  # (P,), (O,)
        of_beam = torch.zeros_like(rows)  # (b'*K,)
        of_beam[open_beams] = parent_of_open
        parent_items = torch.empty_like(parent_rows)  # (P,)
        parent_items[parent_of_open] = open_beams.nonzero().squeeze(1) // K
        parents = Parents(rows=parent_rows, items=parent_items, slots=parent_rows % K, of_beam=of_beam)

    log_probs, lengths = final_log_probs, final_lengths  # (B, K) each
    scores = log_probs / lengths.clamp(min=1) ** length_penalty  # (B, K)
    order = scores.argsort(dim=1, descending=True)  # (B, K)
    # Follow the back-pointers from the final beams (best first) to the first word. An item is absent
    # from the steps after it left the batch; its caption is shorter than those steps anyway.
    steps = len(words)
    sequences = torch.zeros(B, K, steps, dtype=torch.long, device=device)  # (B, K, T)
    attention = torch.zeros(B, K, steps, N, device=device)  # (B, K, T, N)
    beam = order.clone()  # (B, K) index into each item's beams after its last step
    for t in range(steps - 1, -1, -1):
        present = step_items[t]  # (b_t,) the items decoded at step t
        at_t = beam[present]  # (b_t, K)
        sequences[present, :, t] = words[t].gather(1, at_t)
        attention[present, :, t] = alphas[t].gather(1, at_t.unsqueeze(-1).expand(-1, K, N))
        beam[present] = back[t].gather(1, at_t)

    sequences, attention = sequences.cpu(), attention.cpu()
    lengths = lengths.gather(1, order).long().cpu()  # (B, K) in best-first order
    log_probs, scores = log_probs.gather(1, order).cpu(), scores.gather(1, order).cpu()
    results = []
    for b in range(B):  # unpacking only: the search above ran on all items at once
        beams = []
        for k in range(K):
            n_words = int(lengths[b, k]) - 1  # the last emitted token is <eos>
            beams.append(Hypothesis(
                tokens=sequences[b, k, :n_words].tolist(),
                log_prob=float(log_probs[b, k]),
                score=float(scores[b, k]),
                attention=attention[b, k, :n_words].numpy(),
            ))
        results.append(beams)
    return results
