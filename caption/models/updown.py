"""The Up-Down (top-down attention) decoder of Anderson et al. 2018, over grid features.

Two LSTMs per word. The attention LSTM reads the language LSTM's previous hidden state, the mean
feature and the previous word; its new hidden state queries the memory; the language LSTM reads the
attended feature and the attention LSTM's state and predicts the word. With no object detector here,
the "bottom-up" regions are the encoder's grid cells (or a video's frames x cells). As in
self-critical.pytorch's UpDown, features are first embedded to the LSTM size (Linear, ReLU, dropout),
and both LSTMs start from zeros. State: (h_att, c_att, h_lang, c_lang).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from caption.models.base import AdditiveAttention, AttentionConfig, DecoderBase, Memory, State, masked_mean
from caption.models.registry import register_decoder


@dataclass
class UpDownConfig(AttentionConfig):
    type: str = "updown"


@register_decoder("updown", UpDownConfig, title="Up-Down, top-down attention")
class UpDownDecoder(DecoderBase):
    def build_core(self, cfg: UpDownConfig) -> None:
        H = cfg.hidden_dim
        self.embed_features = nn.Sequential(nn.Linear(self.feature_dim, H), nn.ReLU(),
                                            nn.Dropout(cfg.dropout))
        self.attention_lstm = nn.LSTMCell(H + H + cfg.embed_dim, H)  # [h_lang, mean feature, word]
        self.attention = AdditiveAttention(H, H, cfg.attention_dim)
        self.language_lstm = nn.LSTMCell(H + H, H)  # [attended feature, h_att]

    def init_state(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Memory, State]:
        embedded = self.embed_features(features)  # (B, N, H)
        if mask is not None:
            embedded = embedded * mask.unsqueeze(-1).to(embedded.dtype)  # (B, N, H) padding reads as zero
        mean = masked_mean(embedded, mask)  # (B, H)
        memory = Memory(embedded, self.attention.keys(embedded), mask, summary=mean)  # keys (B, N, A)
        zeros = mean.new_zeros(mean.shape[0], self.language_lstm.hidden_size)  # (B, H)
        return memory, (zeros, zeros, zeros, zeros)

    def core(
        self, words: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word for B*K rows (K consecutive rows per item)."""
        h_att, c_att, h_lang, c_lang = state  # (B*K, H) each
        mean = memory.rows(words.shape[0] // memory.items)  # (B*K, H)
        h_att, c_att = self.attention_lstm(  # (B*K, H) x2
            torch.cat([h_lang, mean, words], dim=1), (h_att, c_att))
        context, alpha = self.attention(memory, h_att)  # (B*K, H), (B*K, N): top-down, from this step's h_att
        h_lang, c_lang = self.language_lstm(  # (B*K, H) x2
            torch.cat([context, h_att], dim=1), (h_lang, c_lang))
        return h_lang, (h_att, c_att, h_lang, c_lang), alpha
