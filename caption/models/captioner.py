"""The captioning model: a timm image encoder feeding the attention LSTM decoder."""

from __future__ import annotations

import torch
from torch import nn

from caption.config import DecoderConfig, EncoderConfig
from caption.decoding.beam import Hypothesis, beam_search
from caption.features.encoder import ImageEncoder
from caption.models.decoder import AttentionLSTMDecoder


class CaptionModel(nn.Module):
    def __init__(self, encoder_cfg: EncoderConfig, decoder_cfg: DecoderConfig, vocab_size: int,
                 load_encoder_weights: bool = True):
        super().__init__()
        self.encoder = ImageEncoder(encoder_cfg, load_weights=load_encoder_weights)
        self.decoder = AttentionLSTMDecoder(vocab_size, self.encoder.feature_dim, decoder_cfg,
                                            cells_per_frame=self.encoder.num_positions)
        self.decoder_cfg = decoder_cfg

    @property
    def encoder_cfg(self) -> EncoderConfig:
        return self.encoder.cfg

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) to (B, N, C); videos (B, F, 3, S, S) to (B, F*N, C), frame after frame."""
        if images.ndim == 5:
            B, F = images.shape[:2]
            features = self.encoder(images.flatten(0, 1))  # (B*F, N, C)
            return features.reshape(B, F * features.shape[1], features.shape[2])  # (B, F*N, C)
        return self.encoder(images)  # (B, N, C)

    def forward(self, memory: torch.Tensor, captions: torch.Tensor, mask: torch.Tensor | None = None):
        return self.decoder(memory, captions, mask)  # (B, T, V), (B, T, N)

    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        beam_size: int = 3,
        max_length: int = 20,
        length_penalty: float = 1.0,
    ) -> list[list[Hypothesis]]:
        return beam_search(
            self.decoder, memory, mask, beam_size=beam_size, max_length=max_length, length_penalty=length_penalty
        )
