"""The Show, Attend and Tell soft-attention LSTM decoder (Xu et al. 2015).

The decoder attends over a *set* of N feature vectors per item (B, N, C) with an optional validity mask
(B, N): the grid cells of one image, or the frames x grid cells of a video, look the same to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from caption.config import DecoderConfig

State = tuple[torch.Tensor, torch.Tensor]


@dataclass
class InferenceWeights:
    """AttentionLSTMDecoder's weights rearranged for ``decode_step``; derived, never trained or saved."""

    hidden_weight: torch.Tensor  # (A + C + 4H, H)
    hidden_bias: torch.Tensor  # (A + C + 4H,)
    hidden_sizes: list[int]  # [A, C, 4H]
    word_gates: torch.Tensor  # (V, 4H)
    context_weight: torch.Tensor  # (4H, C)


@dataclass
class Parents:
    """The rows of a decoding state that beams extend, each once (see ``AttentionLSTMDecoder.decode_step``)."""

    rows: torch.Tensor  # (P,) rows of the state, distinct
    items: torch.Tensor  # (P,) item (row of the memory) of each
    slots: torch.Tensor  # (P,) in 0..K-1, distinct among the parents of one item
    of_beam: torch.Tensor  # (b*K,) each beam's parent, an index into rows


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score_i = w^T tanh(W_m m_i + W_h h) + b."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.memory_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(
        self, memory: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``hidden`` (B*K, H) over ``memory`` (B, N, C): K queries per item (K beams in beam
        search, 1 in training), so the memory of an item is never copied once per beam."""
        B, N, _ = memory.shape
        K = hidden.shape[0] // B
        query = self.hidden_proj(hidden).view(B, K, 1, -1)  # (B, K, 1, A)
        # w.tanh(x) + b computed as 2w.sigmoid(2x) + (b - sum(w)): the same function, but PyTorch's CPU
        # sigmoid is about 3x faster than its tanh, and this is the largest elementwise op of a step.
        gate = torch.sigmoid_((projected.unsqueeze(1) + query).mul_(2))  # (B, K, N, A)
        scores = self.scores(gate)  # (B, K, N)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)  # (B, K, N)
        context = torch.bmm(alpha.to(memory.dtype), memory)  # (B, K, C)
        return context.view(B * K, -1), alpha.view(B * K, N)  # (B*K, C), (B*K, N)

    def scores(self, gate: torch.Tensor) -> torch.Tensor:
        """The scores (..., N) from ``gate`` (..., N, A) = sigmoid(2 (W_m m + W_h h)), as in ``forward``."""
        weight = self.score.weight.squeeze(0)  # (A,)
        return gate @ (2 * weight) + (self.score.bias - weight.sum())  # (..., N)


class AttentionLSTMDecoder(nn.Module):
    def __init__(self, vocab_size: int, feature_dim: int, cfg: DecoderConfig, cells_per_frame: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.cells_per_frame = cells_per_frame
        # Video models learn one vector per frame position, added to every cell of that frame.
        self.temporal = nn.Embedding(cfg.temporal_positions, feature_dim) if cfg.temporal_positions else None
        self.cells = nn.Embedding(cells_per_frame, feature_dim) if cfg.cell_positions else None
        for table in (self.temporal, self.cells):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.attention = AdditiveAttention(feature_dim, cfg.hidden_dim, cfg.attention_dim)
        self.init_h = nn.Linear(feature_dim, cfg.hidden_dim)
        self.init_c = nn.Linear(feature_dim, cfg.hidden_dim)
        self.gate = nn.Linear(cfg.hidden_dim, feature_dim)  # f_beta: how much of the context to let in
        self.lstm = nn.LSTMCell(cfg.embed_dim + feature_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden_dim, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.output.weight, -0.1, 0.1)
        nn.init.zeros_(self.output.bias)
        self._inference: tuple[tuple, InferenceWeights] | None = None  # see inference_weights()

    def add_time(self, memory: torch.Tensor) -> torch.Tensor:
        """Add the learned position embeddings (each frame's, each cell's) to ``memory`` (B, F*N, C)."""
        if self.temporal is None and self.cells is None:
            return memory
        B, L, C = memory.shape
        frames = L // self.cells_per_frame
        limit = self.temporal.num_embeddings if self.temporal is not None else frames
        if frames * self.cells_per_frame != L or frames > limit:
            raise ValueError(f"memory of {L} positions is not up to {limit} frames of {self.cells_per_frame} "
                             "cells: sample as many frames as the model was trained on")
        positions = memory.new_zeros(frames, self.cells_per_frame, C)  # (F, N, C)
        if self.temporal is not None:
            positions = positions + self.temporal.weight[:frames, None].to(memory.dtype)  # (F, N, C)
        if self.cells is not None:
            positions = positions + self.cells.weight[None].to(memory.dtype)  # (F, N, C)
        return memory + positions.view(1, L, C)  # (B, F*N, C)

    def start(self, memory: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Project the memory once for attention and initialise (h, c) from its (masked) mean."""
        if mask is None:
            mean = memory.mean(dim=1)  # (B, C)
        else:
            weights = mask.unsqueeze(-1).to(memory.dtype)  # (B, N, 1)
            mean = (memory * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, C)
        projected = self.attention.memory_proj(memory)  # (B, N, A)
        return projected, (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))  # (B, H) each

    def step(
        self,
        embedded: torch.Tensor,
        state: State,
        memory: torch.Tensor,
        projected: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word: attend with the previous hidden state, gate the context, advance the LSTM.

        ``memory`` (B, N, C) and ``projected`` (B, N, A) hold one row per item; ``embedded`` (B*K, E) and
        ``state`` (B*K, H) hold K consecutive rows per item (its beams).
        """
        h, c = state  # (B*K, H) each
        context, alpha = self.attention(memory, projected, h, mask)  # (B*K, C), (B*K, N)
        context = torch.sigmoid(self.gate(h)) * context  # (B*K, C)
        h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))  # (B*K, H) each
        logits = self.output(self.dropout(h))  # (B*K, V)
        return logits, (h, c), alpha

    def inference_weights(self) -> InferenceWeights:
        """The weights rearranged for ``decode_step``, built on first use and again whenever a parameter
        changes (an optimizer step or ``load_state_dict`` bumps its version, ``.to()`` moves its data)."""
        key = tuple((p.device, p.data_ptr(), p._version) for p in self.parameters())
        if self._inference is None or self._inference[0] != key:
            with torch.no_grad():
                E = self.embedding.embedding_dim
                w_ih = self.lstm.weight_ih  # (4H, E + C) acting on cat[embedded, context]
                query, lstm = self.attention.hidden_proj, self.lstm
                weights = InferenceWeights(
                    # Every matmul that reads h, as one: the attention query (doubled, see start_decoding),
                    # the context gate and the LSTM's W_hh.
                    hidden_weight=torch.cat([2 * query.weight, self.gate.weight, lstm.weight_hh]),  # (A+C+4H, H)
                    hidden_bias=torch.cat([2 * query.bias, self.gate.bias, lstm.bias_hh]),  # (A+C+4H,)
                    hidden_sizes=[query.out_features, self.gate.out_features, 4 * lstm.hidden_size],
                    # W_ih's embedding half and b_ih depend only on the word: one row per vocabulary word.
                    word_gates=torch.addmm(lstm.bias_ih, self.embedding.weight, w_ih[:, :E].t()),  # (V, 4H)
                    context_weight=w_ih[:, E:].contiguous(),  # (4H, C)
                )
            self._inference = (key, weights)
        return self._inference[1]

    def start_decoding(self, memory: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """``start`` for ``decode_step``: the projected memory comes doubled, which ``step`` does every step."""
        projected, state = self.start(memory, mask)  # (B, N, A), (B, H) x2
        return projected.mul_(2), state

    def decode_step(
        self,
        tokens: torch.Tensor,
        state: State,
        parents: Parents,
        memory: torch.Tensor,
        projected: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """``step`` in eval mode for inference: the same function (to float rounding) with fewer, larger matmuls.

        Beam b*K + k feeds word ``tokens`` (b*K,) to the row ``parents.rows[parents.of_beam[b*K + k]]`` of
        ``state``. Attention and the context depend only on that row, so they run once per parent (P rows)
        however many beams extend it. ``projected`` comes from ``start_decoding``. No autograd.
        Returns logits (b*K, V), the new state (b*K, H) x2 and the attention of each parent (P, N).
        """
        weights = self.inference_weights()
        B, N, _ = memory.shape
        K = tokens.shape[0] // B
        # index_select, not x[index]: PyTorch's CPU advanced indexing is several times slower on wide rows.
        h, c = state[0].index_select(0, parents.rows), state[1].index_select(0, parents.rows)  # (P, H) each
        hidden = torch.addmm(weights.hidden_bias, h, weights.hidden_weight.t())  # (P, A+C+4H)
        query, context_gate, gates = hidden.split(weights.hidden_sizes, dim=1)  # (P, A), (P, C), (P, 4H)
        gate = torch.sigmoid_(projected.index_select(0, parents.items).add_(query.unsqueeze(1)))  # (P, N, A)
        scores = self.attention.scores(gate)  # (P, N)
        if mask is not None:
            scores = scores.masked_fill(~mask.index_select(0, parents.items), torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)  # (P, N)
        # A parent's slot is unique within its item, so all parents read the memory in one batched matmul.
        slots = alpha.new_zeros(B, K, N)  # (B, K, N)
        slots[parents.items, parents.slots] = alpha
        context = torch.bmm(slots.to(memory.dtype), memory)[parents.items, parents.slots]  # (P, C)
        context = torch.sigmoid_(context_gate) * context  # (P, C)
        gates = torch.addmm(gates, context, weights.context_weight.t())  # (P, 4H)
        gates = gates.index_select(0, parents.of_beam).add_(weights.word_gates.index_select(0, tokens))  # (b*K, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # (b*K, H) each; nn.LSTMCell's order and arithmetic
        c = (torch.sigmoid_(f) * c.index_select(0, parents.of_beam)).add_(torch.sigmoid_(i) * torch.tanh_(g))  # (b*K, H)
        h = torch.sigmoid_(o) * torch.tanh(c)  # (b*K, H)
        return self.output(h), (h, c), alpha  # (b*K, V), (b*K, H) x2, (P, N)

    def forward(
        self,
        memory: torch.Tensor,
        captions: torch.Tensor,
        mask: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
        pad_id: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing over ``captions`` (M, L) = <bos> w1 .. wn <eos> <pad>.. ; predicts captions[:, 1:].

        ``memory`` (B, N, C) may hold fewer rows than there are captions: ``item_index`` (M,) names the
        row of each caption, so an image with five captions is projected once, not five times.
        Captions run longest first and step t advances only the rows still going, so padding costs
        nothing (sgrvinod's trick). Outputs at padded steps are zero.
        """
        M, L = captions.shape
        memory = self.add_time(memory)  # (B, N, C)
        projected, (h, c) = self.start(memory, mask)  # (B, N, A), (B, H) x2
        steps = (captions[:, 1:] != pad_id).sum(dim=1)  # (M,) words + <eos> to predict
        steps, order = steps.sort(descending=True)  # (M,), (M,)
        rows = order if item_index is None else item_index[order]  # (M,) memory row of each sorted caption
        memory, projected = memory[rows], projected[rows]  # (M, N, C), (M, N, A)
        h, c = h[rows], c[rows]  # (M, H) each
        mask = mask[rows] if mask is not None else None  # (M, N)
        embedded = self.embedding(captions[order, :-1])  # (M, T, E)
        active_rows = (steps.unsqueeze(0) > torch.arange(L - 1, device=steps.device).unsqueeze(1)).sum(1).tolist()
        logits, alphas = [], []
        for t, b in enumerate(active_rows):
            if b == 0:  # every caption has ended: the rest is padding
                logits.append(h.new_zeros(M, self.vocab_size))  # (M, V)
                alphas.append(h.new_zeros(M, memory.shape[1]))  # (M, N)
                continue
            step_mask = mask[:b] if mask is not None else None
            step_logits, (h, c), alpha = self.step(
                embedded[:b, t], (h[:b], c[:b]), memory[:b], projected[:b], step_mask
            )  # (b, V), (b, H) x2, (b, N)
            logits.append(F.pad(step_logits, (0, 0, 0, M - b)))  # (M, V)
            alphas.append(F.pad(alpha, (0, 0, 0, M - b)))  # (M, N)
        inverse = order.argsort()  # (M,)
        return torch.stack(logits, 1)[inverse], torch.stack(alphas, 1)[inverse]  # (M, T, V), (M, T, N)


def caption_loss(
    logits: torch.Tensor,
    alphas: torch.Tensor,
    captions: torch.Tensor,
    *,
    pad_id: int = 0,
    label_smoothing: float = 0.0,
    attention_reg: float = 1.0,
    memory_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the words plus the doubly stochastic attention regulariser.

    The regulariser, lambda * mean_i (1 - sum_t alpha_ti)^2, pushes the decoder to look at every
    position at some point of the caption. Returns (total loss, cross-entropy alone).
    """
    targets = captions[:, 1:]  # (B, T)
    valid = targets != pad_id  # (B, T)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
        ignore_index=pad_id, label_smoothing=label_smoothing,
    )
    if attention_reg == 0:
        return ce, ce
    coverage = (alphas.float() * valid.unsqueeze(-1)).sum(dim=1)  # (B, N)
    penalty = (1.0 - coverage) ** 2  # (B, N)
    if memory_mask is not None:
        penalty = (penalty * memory_mask).sum() / memory_mask.sum().clamp(min=1)
    else:
        penalty = penalty.mean()
    return ce + attention_reg * penalty, ce
