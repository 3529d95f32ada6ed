"""The Up-Down (top-down attention) decoder of Anderson et al. 2018, over grid features.

Two LSTMs per word. The attention LSTM reads the language LSTM's previous hidden state, the mean
feature and the previous word; its new hidden state queries the memory; the language LSTM reads the
attended feature and the attention LSTM's state and predicts the word. With no object detector here,
the "bottom-up" regions are the encoder's grid cells (or a video's frames x cells). As in
self-critical.pytorch's UpDown, features are first embedded to the LSTM size (Linear, ReLU, dropout),
and both LSTMs start from zeros. State: (h_att, c_att, h_lang, c_lang).
"""

from __future__ import annotations

import torch
from torch import nn

from caption.config import DecoderConfig
from caption.models.base import AdditiveAttention, DecoderBase, Memory, State, masked_mean


class UpDownDecoder(DecoderBase):
    def __init__(self, vocab_size: int, feature_dim: int, cfg: DecoderConfig):
        super().__init__()
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        H = cfg.hidden_dim
        self.embed_features = nn.Sequential(nn.Linear(feature_dim, H), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.attention_lstm = nn.LSTMCell(H + H + cfg.embed_dim, H)  # [h_lang, mean feature, word]
        self.attention = AdditiveAttention(H, H, cfg.attention_dim)
        self.language_lstm = nn.LSTMCell(H + H, H)  # [attended feature, h_att]
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(H, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.output.weight, -0.1, 0.1)
        nn.init.zeros_(self.output.bias)

    def init_state(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Memory, State]:
        embedded = self.embed_features(features)  # (B, N, H)
        if mask is not None:
            embedded = embedded * mask.unsqueeze(-1).to(embedded.dtype)  # (B, N, H) padding reads as zero
        mean = masked_mean(embedded, mask)  # (B, H)
        memory = Memory(embedded, self.attention.keys(embedded), mask, summary=mean)  # keys (B, N, A)
        zeros = mean.new_zeros(mean.shape[0], self.language_lstm.hidden_size)  # (B, H)
        return memory, (zeros, zeros, zeros, zeros)

    def step(self, tokens: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word for B*K rows (K consecutive rows per item)."""
        h_att, c_att, h_lang, c_lang = state  # (B*K, H) each
        mean = memory.rows(tokens.shape[0] // memory.items)  # (B*K, H)
        h_att, c_att = self.attention_lstm(torch.cat([h_lang, mean, self.embedding(tokens)], dim=1), (h_att, c_att))
        context, alpha = self.attention(memory, h_att)  # (B*K, H), (B*K, N): top-down, from this step's h_att
        h_lang, c_lang = self.language_lstm(torch.cat([context, h_att], dim=1), (h_lang, c_lang))  # (B*K, H) each
        logits = self.output(self.dropout(h_lang))  # (B*K, V)
        return logits, (h_att, c_att, h_lang, c_lang), alpha
