"""The one interface every caption decoder implements, and what the decoders share.

A decoder attends over a *set* of N feature vectors per item (B, N, C) with an optional validity mask
(B, N): the grid cells of one image, or the frames x grid cells of a video, look the same to it. Beam
search, greedy decoding, sampling and teacher forcing are written once against ``Decoder``:

- ``init_state(features, mask)`` prepares the memory once per item (``Memory``) and gives each item's
  initial state;
- ``step(tokens, state, memory)`` feeds one word to R = B * K state rows (K consecutive rows per item:
  its beams or samples) and returns the next-word logits, the new state and the attention of each row;
- ``select(state, rows)`` reorders, repeats or drops state rows (beams following their parents).

``beam_step`` is the step beam search takes; its default here is ``select`` then ``step``, and a decoder
may override it with a fused fast path that gives the same log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from caption.config import DecoderConfig, _require
from caption.data.vocab import Vocabulary

# A decoder's recurrent state: tensors with one row per caption being written, rows first.
State = tuple[torch.Tensor, ...]


@dataclass
class Memory:
    """What a decoder attends over, prepared once per item however many beams or samples read it."""

    features: torch.Tensor  # (B, N, C)
    keys: torch.Tensor  # (B, N, A) the features projected for attention
    mask: torch.Tensor | None = None  # (B, N) True where a position holds a real feature
    summary: torch.Tensor | None = None  # (B, D) one vector per item that some decoders read every step

    def rows(self, K: int) -> torch.Tensor | None:
        """The summary of each of K consecutive rows per item (B*K, D)."""
        if self.summary is None:
            return None
        B, D = self.summary.shape
        return self.summary.unsqueeze(1).expand(B, K, D).reshape(B * K, D)  # (B*K, D)

    @property
    def items(self) -> int:
        return self.features.shape[0]

    def select(self, items: torch.Tensor) -> Memory:
        """The memory of ``items`` (b,), in that order (an item may repeat)."""
        # index_select, not x[index]: PyTorch's CPU advanced indexing is several times slower on wide rows.
        return self._map(lambda part: part.index_select(0, items))

    def head(self, b: int) -> Memory:
        """The first ``b`` items (a view, no copy)."""
        return self._map(lambda part: part[:b])

    def _map(self, fn) -> Memory:
        return Memory(**{f.name: None if (part := getattr(self, f.name)) is None else fn(part)
                         for f in fields(self)})


@dataclass
class Parents:
    """The rows of a decoding state that beams extend, each once (see ``Decoder.beam_step``)."""

    rows: torch.Tensor  # (P,) rows of the state, distinct
    items: torch.Tensor  # (P,) item (row of the memory) of each
    slots: torch.Tensor  # (P,) in 0..K-1, distinct among the parents of one item
    of_beam: torch.Tensor  # (b*K,) each beam's parent, an index into rows


@runtime_checkable
class Decoder(Protocol):
    vocab_size: int

    def init_state(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[Memory, State]: ...

    def step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]: ...

    def select(self, state: State, rows: torch.Tensor) -> State: ...

    def beam_step(
        self, tokens: torch.Tensor, state: State, parents: Parents, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]: ...


def masked_mean(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean feature of each item (B, C) over its valid positions."""
    if mask is None:
        return features.mean(dim=1)  # (B, C)
    weights = mask.unsqueeze(-1).to(features.dtype)  # (B, N, 1)
    return (features * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, C)


@dataclass
class AttentionConfig(DecoderConfig):
    """The config of a decoder that attends with ``AdditiveAttention``: the size of its attention layer."""

    attention_dim: int = 512

    def validate(self) -> None:
        super().validate()
        _require(self.attention_dim >= 1, "decoder.attention_dim", "must be positive")


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score_i = w^T tanh(W_m m_i + W_h h) + b."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.memory_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """The memory side, once per item: 2 W_m m (B, N, A) (doubled, see ``forward``)."""
        return self.memory_proj(features).mul_(2)  # (B, N, A)

    def forward(self, memory: Memory, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``hidden`` (B*K, H) over the memory (B, N, C): K queries per item (K beams or samples,
        1 in training), so the memory of an item is never copied once per query."""
        B, N, _ = memory.features.shape
        K = hidden.shape[0] // B
        query = self.hidden_proj(hidden).mul(2).view(B, K, 1, -1)  # (B, K, 1, A)
        # w.tanh(x) + b computed as 2w.sigmoid(2x) + (b - sum(w)): the same function, but PyTorch's CPU
        # sigmoid is about 3x faster than its tanh, and this is the largest elementwise op of a step.
        gate = torch.sigmoid(memory.keys.unsqueeze(1) + query)  # (B, K, N, A)
        scores = self.scores(gate)  # (B, K, N)
        if memory.mask is not None:
            scores = scores.masked_fill(~memory.mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)  # (B, K, N)
        context = torch.bmm(alpha.to(memory.features.dtype), memory.features)  # (B, K, C)
        return context.view(B * K, -1), alpha.view(B * K, N)  # (B*K, C), (B*K, N)

    def scores(self, gate: torch.Tensor) -> torch.Tensor:
        """The scores (..., N) from ``gate`` (..., N, A) = sigmoid(2 (W_m m + W_h h)), as in ``forward``."""
        weight = self.score.weight.squeeze(0)  # (A,)
        return gate @ (2 * weight) + (self.score.bias - weight.sum())  # (..., N)


class DecoderBase(nn.Module):
    """What every decoder gets for free on top of ``init_state`` and ``core``: the word embedding and the
    output layer around the core (self-critical.pytorch's ``core`` / ``get_logprobs_state`` split), row
    selection, the generic beam step and teacher forcing. A decoder builds its own layers in
    ``build_core`` and writes one step of its recurrence in ``core``."""

    def __init__(self, vocab_size: int, feature_dim: int, cfg: DecoderConfig):
        super().__init__()
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.pad_id = Vocabulary.pad_id
        # Created in this order (embedding, the core's layers, output) so the parameters, their random
        # initialisation and saved optimizer states keep the order they had before this base class held them.
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=self.pad_id)
        self.build_core(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden_dim, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.output.weight, -0.1, 0.1)
        nn.init.zeros_(self.output.bias)

    def build_core(self, cfg: DecoderConfig) -> None:
        """Create the decoder's own layers (between the word embedding and the output layer)."""
        raise NotImplementedError

    def init_state(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Memory, State]:
        raise NotImplementedError

    def core(
        self, words: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One step for R = B*K rows from the embedded words (R, E): the hidden state the output layer reads
        (R, H), the new state and the attention (R, N)."""
        raise NotImplementedError

    def step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        hidden, state, alpha = self.core(self.embedding(tokens), state, memory)  # (R, H), ..., (R, N)
        return self.output(self.dropout(hidden)), state, alpha  # (R, V), ..., (R, N)

    def select(self, state: State, rows: torch.Tensor) -> State:
        return tuple(part.index_select(0, rows) for part in state)

    def beam_step(
        self, tokens: torch.Tensor, state: State, parents: Parents, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Beam b*K + k feeds word ``tokens`` (b*K,) to the state row
        ``parents.rows[parents.of_beam[b*K + k]]``. Returns logits (b*K, V), the new state (b*K rows) and
        each beam's attention (b*K, N)."""
        state = self.select(state, parents.rows.index_select(0, parents.of_beam))  # (b*K, ...)
        return self.step(tokens, state, memory)  # (b*K, V), ..., (b*K, N)

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        item_index: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing over ``captions`` (M, L) = <bos> w1 .. wn <eos> <pad>.. ; predicts captions[:, 1:].

        ``features`` (B, N, C) may hold fewer rows than there are captions: ``item_index`` (M,) names the
        row of each caption, so an image with five captions is projected once, not five times.
        Captions run longest first and step t advances only the rows still going, so padding costs
        nothing (sgrvinod's trick). Outputs at padded steps are zero.
        """
        M, L = captions.shape
        memory, state = self.init_state(features, mask)  # (B, ...)
        steps = (captions[:, 1:] != self.pad_id).sum(dim=1)  # (M,) words + <eos> to predict
        steps, order = steps.sort(descending=True)  # (M,), (M,)
        rows = order if item_index is None else item_index.index_select(0, order)  # (M,) memory row of each
        memory, state = memory.select(rows), self.select(state, rows)  # (M, ...)
        tokens = captions.index_select(0, order)  # (M, L)
        active_rows = (
            steps.unsqueeze(0) > torch.arange(L - 1, device=steps.device).unsqueeze(1)
        ).sum(1).tolist()
        N = memory.features.shape[1]
        logits, alphas = [], []
        for t, b in enumerate(active_rows):
            if b == 0:  # every caption has ended: the rest is padding
                logits.append(memory.features.new_zeros(M, self.vocab_size))  # (M, V)
                alphas.append(memory.features.new_zeros(M, N))  # (M, N)
                continue
            state = tuple(part[:b] for part in state)  # (b, ...)
            step_logits, state, alpha = self.step(tokens[:b, t], state, memory.head(b))  # (b, V), ..., (b, N)
            logits.append(F.pad(step_logits, (0, 0, 0, M - b)))  # (M, V)
            alphas.append(F.pad(alpha, (0, 0, 0, M - b)))  # (M, N)
        inverse = order.argsort()  # (M,)
        return torch.stack(logits, 1)[inverse], torch.stack(alphas, 1)[inverse]  # (M, T, V), (M, T, N)
