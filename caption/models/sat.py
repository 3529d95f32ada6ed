"""The Show, Attend and Tell soft-attention LSTM decoder (Xu et al. 2015)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from caption.models.base import (
    AdditiveAttention,
    AttentionConfig,
    DecoderBase,
    Memory,
    Parents,
    State,
    masked_mean,
)
from caption.models.registry import register_decoder


@dataclass
class SatConfig(AttentionConfig):
    type: str = "sat"


@register_decoder("sat", SatConfig, title="Show, Attend and Tell")
class AttentionLSTMDecoder(DecoderBase):
    """One LSTM: each step attends with the previous hidden state, gates the context (f_beta) and feeds
    [word, context] to the LSTM, whose hidden state predicts the word. State: (h, c)."""

    def build_core(self, cfg: SatConfig) -> None:
        self.attention = AdditiveAttention(self.feature_dim, cfg.hidden_dim, cfg.attention_dim)
        self.init_h = nn.Linear(self.feature_dim, cfg.hidden_dim)
        self.init_c = nn.Linear(self.feature_dim, cfg.hidden_dim)
        self.gate = nn.Linear(cfg.hidden_dim, self.feature_dim)  # f_beta: how much of the context to let in
        self.lstm = nn.LSTMCell(cfg.embed_dim + self.feature_dim, cfg.hidden_dim)

    def init_state(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Memory, State]:
        """Project the memory once for attention and initialise (h, c) from its (masked) mean."""
        mean = masked_mean(features, mask)  # (B, C)
        memory = Memory(features, self.attention.keys(features), mask)  # keys (B, N, A)
        return memory, (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))  # (B, H) each

    def core(
        self, words: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word for B*K rows (K consecutive rows per item): attend with the previous hidden state,
        gate the context, advance the LSTM."""
        h, c = state  # (B*K, H) each
        context, alpha = self.attention(memory, h)  # (B*K, C), (B*K, N)
        context = torch.sigmoid(self.gate(h)) * context  # (B*K, C)
        h, c = self.lstm(torch.cat([words, context], dim=1), (h, c))  # (B*K, H) each
        return h, (h, c), alpha

    def beam_step(
        self, tokens: torch.Tensor, state: State, parents: Parents, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """``step`` in eval mode for beam search: the same function (to float rounding) with fewer, larger
        matmuls. Attention and the context depend only on the parent row, so they run once per parent (P
        rows) however many beams extend it. Returns logits (b*K, V), the state (b*K, H) x2 and each beam's
        attention (b*K, N). No autograd."""
        weights = fused_weights(self)
        B, N, _ = memory.features.shape
        K = tokens.shape[0] // B
        h, c = state[0].index_select(0, parents.rows), state[1].index_select(0, parents.rows)  # (P, H) each
        hidden = torch.addmm(weights.hidden_bias, h, weights.hidden_weight.t())  # (P, A+C+4H)
        query, context_gate, gates = hidden.split(weights.hidden_sizes, dim=1)  # (P, A), (P, C), (P, 4H)
        gate = torch.sigmoid_(  # (P, N, A)
            memory.keys.index_select(0, parents.items).add_(query.unsqueeze(1)))
        scores = self.attention.scores(gate)  # (P, N)
        if memory.mask is not None:
            scores = scores.masked_fill(~memory.mask.index_select(0, parents.items),
                                        torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)  # (P, N)
        # A parent's slot is unique within its item, so all parents read the memory in one batched matmul.
        slots = alpha.new_zeros(B, K, N)  # (B, K, N)
        slots[parents.items, parents.slots] = alpha
        context = torch.bmm(  # (P, C)
            slots.to(memory.features.dtype), memory.features)[parents.items, parents.slots]
        context = torch.sigmoid_(context_gate) * context  # (P, C)
        gates = torch.addmm(gates, context, weights.context_weight.t())  # (P, 4H)
        gates = gates.index_select(0, parents.of_beam).add_(  # (b*K, 4H)
            weights.word_gates.index_select(0, tokens))
        i, f, g, o = gates.chunk(4, dim=1)  # (b*K, H) each; nn.LSTMCell's order and arithmetic
        c = (torch.sigmoid_(f) * c.index_select(0, parents.of_beam)).add_(  # (b*K, H)
            torch.sigmoid_(i) * torch.tanh_(g))
        h = torch.sigmoid_(o) * torch.tanh(c)  # (b*K, H)
        return (self.output(h), (h, c),  # (b*K, V), (b*K, H) x2
                alpha.index_select(0, parents.of_beam))  # (b*K, N)


@dataclass
class FusedWeights:
    """AttentionLSTMDecoder's weights rearranged for ``beam_step``; derived, never trained or saved."""

    key: tuple  # the parameters' (device, storage, version) they were built from
    hidden_weight: torch.Tensor  # (A + C + 4H, H)
    hidden_bias: torch.Tensor  # (A + C + 4H,)
    hidden_sizes: list[int]  # [A, C, 4H]
    word_gates: torch.Tensor  # (V, 4H)
    context_weight: torch.Tensor  # (4H, C)


# Kept beside the modules, not in them: derived inference data is no part of a trainable module's state.
_FUSED: weakref.WeakKeyDictionary[AttentionLSTMDecoder, FusedWeights] = weakref.WeakKeyDictionary()


def fused_weights(decoder: AttentionLSTMDecoder) -> FusedWeights:
    """The weights rearranged for ``beam_step``, built on first use and again whenever a parameter changes
    (an optimizer step or ``load_state_dict`` bumps its version, ``.to()`` moves its data)."""
    key = tuple((p.device, p.data_ptr(), p._version) for p in decoder.parameters())
    cached = _FUSED.get(decoder)
    if cached is not None and cached.key == key:
        return cached
    with torch.no_grad():
        E = decoder.embedding.embedding_dim
        w_ih = decoder.lstm.weight_ih  # (4H, E + C) acting on cat[embedded, context]
        query, lstm = decoder.attention.hidden_proj, decoder.lstm
        weights = FusedWeights(
            key=key,
            # Every matmul that reads h, as one: the attention query (doubled, as the keys are), the context
            # gate and the LSTM's W_hh.
            hidden_weight=torch.cat([2 * query.weight, decoder.gate.weight, lstm.weight_hh]),  # (A+C+4H, H)
            hidden_bias=torch.cat([2 * query.bias, decoder.gate.bias, lstm.bias_hh]),  # (A+C+4H,)
            hidden_sizes=[query.out_features, decoder.gate.out_features, 4 * lstm.hidden_size],
            # W_ih's embedding half and b_ih depend only on the word: one row per vocabulary word.
            word_gates=torch.addmm(lstm.bias_ih, decoder.embedding.weight, w_ih[:, :E].t()),  # (V, 4H)
            context_weight=w_ih[:, E:].contiguous(),  # (4H, C)
        )
    _FUSED[decoder] = weights
    return weights
