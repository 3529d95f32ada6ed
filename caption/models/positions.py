"""Where each memory position came from, for every decoder: learned frame and grid-cell embeddings."""

from __future__ import annotations

import torch
from torch import nn

from caption.config import DecoderConfig


class MemoryPositions(nn.Module):
    """Adds a learned vector per frame position (video models: which frame a cell came from, as SA-LSTM's
    temporal attention needs) and per grid cell (where in the frame) to the encoder's features. Image
    models have neither and pass features through unchanged."""

    def __init__(self, feature_dim: int, cells_per_frame: int, cfg: DecoderConfig):
        super().__init__()
        self.cells_per_frame = cells_per_frame
        self.temporal = nn.Embedding(cfg.temporal_positions, feature_dim) if cfg.temporal_positions else None
        self.cells = nn.Embedding(cells_per_frame, feature_dim) if cfg.cell_positions else None
        for table in (self.temporal, self.cells):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, F*N, C), frame after frame, with each position's embeddings added."""
        if self.temporal is None and self.cells is None:
            return features
        B, L, C = features.shape
        frames = L // self.cells_per_frame
        limit = self.temporal.num_embeddings if self.temporal is not None else frames
        if frames * self.cells_per_frame != L or frames > limit:
            raise ValueError(f"memory of {L} positions is not up to {limit} frames of {self.cells_per_frame} "
                             "cells: sample as many frames as the model was trained on")
        positions = features.new_zeros(frames, self.cells_per_frame, C)  # (F, N, C)
        if self.temporal is not None:
            positions = positions + self.temporal.weight[:frames, None].to(features.dtype)  # (F, N, C)
        if self.cells is not None:
            positions = positions + self.cells.weight[None].to(features.dtype)  # (F, N, C)
        return features + positions.view(1, L, C)  # (B, F*N, C)
