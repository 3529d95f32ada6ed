"""The captioning model: a timm image encoder, the memory's position embeddings and a decoder."""

from __future__ import annotations

import torch
from torch import nn

from caption.config import DecoderConfig, EncoderConfig
from caption.features.encoder import ImageEncoder
from caption.models.positions import MemoryPositions
from caption.models.registry import build_decoder


class CaptionModel(nn.Module):
    def __init__(self, encoder_cfg: EncoderConfig, decoder_cfg: DecoderConfig, vocab_size: int,
                 load_encoder_weights: bool = True):
        super().__init__()
        self.encoder = ImageEncoder(encoder_cfg, load_weights=load_encoder_weights)
        self.positions = MemoryPositions(self.encoder.feature_dim, self.encoder.num_positions, decoder_cfg)
        self.decoder = build_decoder(vocab_size, self.encoder.feature_dim, decoder_cfg)
        self.decoder_cfg = decoder_cfg

    @property
    def encoder_cfg(self) -> EncoderConfig:
        return self.encoder.cfg

    def parameter_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """The optimiser's parameter groups: the memory positions and the decoder at ``lr``, then the
        encoder's trainable parameters (encoder.finetune_stages), if any, at ``encoder_lr``."""
        groups = [{"params": [*self.positions.parameters(), *self.decoder.parameters()], "lr": lr}]
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": encoder_lr})
        return groups

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) to (B, N, C); videos (B, F, 3, S, S) to (B, F*N, C), frame after frame."""
        if images.ndim == 5:
            B, F = images.shape[:2]
            features = self.encoder(images.flatten(0, 1))  # (B*F, N, C)
            return features.reshape(B, F * features.shape[1], features.shape[2])  # (B, F*N, C)
        return self.encoder(images)  # (B, N, C)

    def decoder_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The features the decoder attends over (B, N, C): images or videos go through the encoder, cached
        features (B, N, C) do not; then every position learns where it came from."""
        features = inputs if inputs.ndim == 3 else self.encode(inputs)  # (B, N, C)
        return self.positions(features)  # (B, N, C)

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, item_index: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing, what training calls: ``inputs`` (images, videos or cached features) and captions
        (M, L), ``item_index`` (M,) the input row of each caption; returns logits (M, T, V) and attention
        (M, T, N)."""
        return self.decoder(self.decoder_features(inputs), captions, item_index=item_index, mask=mask)
