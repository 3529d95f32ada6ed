"""Multinomial sampling of K captions per item for a whole batch at once, for any ``Decoder``.

What self-critical training draws its captions from. All B * K captions advance together, one decoder
step per word (no loop over items); a caption that has ended keeps emitting <pad> and no longer counts.
Sampling runs without autograd: the trainer re-scores the samples with teacher forcing (see
``caption.training.losses.scst_loss`` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from caption.config import DecodingConfig
from caption.data.vocab import SpecialTokens
from caption.decoding.constraints import allowed_logits
from caption.models.base import Decoder


@dataclass
class Samples:
    """``decoding.samples`` captions per item, item after item (rows i*K .. i*K + K-1 are item i's)."""

    # A caption cut by max_length has no <eos>.
    tokens: torch.Tensor  # (B*K, T) words then <eos>, then <pad>; no <bos>
    lengths: torch.Tensor  # (B*K,) tokens emitted, <eos> included
    log_probs: torch.Tensor  # (B*K,) sum of the sampling distribution's log-probabilities of those tokens
    ended: torch.Tensor  # (B*K,) True where the caption chose to end (emitted <eos>) within max_length words
    entropy: torch.Tensor  # () mean entropy (nats) of the sampling distribution over the emitted tokens

    def words(self, row: int) -> list[int]:
        """Caption ``row``'s word ids, without <eos>."""
        n = int(self.lengths[row]) - int(self.ended[row])
        return self.tokens[row, :n].tolist()


def sampling_log_probs(
    logits: torch.Tensor, decoding: DecodingConfig, special: SpecialTokens, first: int = 0
) -> torch.Tensor:
    """The distribution sampling draws from, as log-probabilities (R, T, V), from logits (R, T, V) of steps
    ``first`` .. ``first`` + T - 1 (step 0 chooses the first word): what a caption may never say removed
    (``allowed_logits``), logits / temperature. The trainer re-scores samples with this too."""
    return (allowed_logits(logits, special, first) / decoding.temperature).log_softmax(dim=-1)  # (R, T, V)


@torch.no_grad()
def sample(
    decoder: Decoder,
    features: torch.Tensor,
    mask: torch.Tensor | None,
    decoding: DecodingConfig,
    special: SpecialTokens,
    generator: torch.Generator | None = None,
) -> Samples:
    """Draw ``decoding.samples`` captions of at most ``decoding.max_length`` words for each item of
    ``features`` (B, N, C), from softmax(logits / ``decoding.temperature``)."""
    B = features.shape[0]
    K = decoding.samples
    device = features.device
    memory, state = decoder.init_state(features, mask)  # (B, ...)
    state = decoder.select(state, torch.arange(B, device=device).repeat_interleave(K))  # (B*K, ...)
    tokens = torch.full((B * K,), special.bos, dtype=torch.long, device=device)  # (B*K,)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)  # (B*K,)
    lengths = torch.zeros(B * K, dtype=torch.long, device=device)  # (B*K,)
    log_probs = torch.zeros(B * K, device=device)  # (B*K,)
    entropy_sum = torch.zeros((), device=device)
    emitted = []
    for t in range(decoding.max_length):  # a caption still open after max_length words is cut, without <eos>
        logits, state, _ = decoder.step(tokens, state, memory)  # (B*K, V)
        step = sampling_log_probs(logits.unsqueeze(1), decoding, special, first=t).squeeze(1)  # (B*K, V)
        word = torch.multinomial(step.exp(), 1, generator=generator).squeeze(1)  # (B*K,)
        live = ~finished  # (B*K,)
        word = torch.where(live, word, special.pad)  # (B*K,)
        picked = step.gather(1, word.unsqueeze(1)).squeeze(1)  # (B*K,)
        log_probs += torch.where(live, picked, 0.0)
        entropy = -(step.exp() * step.nan_to_num(neginf=0.0)).sum(1)  # (B*K,)
        entropy_sum += (entropy * live).sum()
        lengths += live.long()
        finished |= word == special.eos
        emitted.append(word)
        tokens = word
        if bool(finished.all()):  # one host sync per word; decoding steps are far dearer
            break
    sequences = torch.stack(emitted, dim=1)  # (B*K, T)
    return Samples(sequences, lengths, log_probs, finished, entropy_sum / lengths.sum().clamp(min=1))
