"""A model, its vocabulary and a device, ready to write captions: what the API, evaluation and
validation during training all caption with."""

from __future__ import annotations

import torch

from caption.config import DecodingConfig
from caption.data.images import ImageTransform
from caption.data.vocab import Vocabulary
from caption.decoding.beam import Hypothesis, beam_search
from caption.models.captioner import CaptionModel
from caption.utils.runtime import inference_autocast, inference_dtype


class Predictor:
    """``precision``: ``auto``, ``fp32`` or ``bf16`` (see ``caption.utils.runtime.inference_dtype``)."""

    def __init__(self, model: CaptionModel, vocab: Vocabulary, device: torch.device, precision: str = "auto"):
        self.model = model
        self.vocab = vocab
        self.device = device
        inference_dtype(device, precision)  # refuses an unknown precision here, not at the first batch
        self.precision = precision
        cfg = model.encoder_cfg
        self.transform = ImageTransform(cfg.image_size, cfg.mean, cfg.std)
        # Frames per video: one per temporal position of a video model; 8 for an image model used zero-shot.
        self.frames_per_video = model.decoder_cfg.temporal_positions or 8

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) or videos' frames (B, F, 3, S, S), already normalised, to features (B, N, C)
        or (B, F*N, C) in fp32."""
        with inference_autocast(self.device, self.precision):
            return self.model.encode(images.to(self.device, non_blocking=True)).float()  # (B, N, C)

    @torch.inference_mode()
    def hypotheses(
        self, features: torch.Tensor, mask: torch.Tensor | None, decoding: DecodingConfig
    ) -> list[list[Hypothesis]]:
        """Beam search over encoder ``features`` (B, N, C): all items and all beams at once."""
        features = features.to(self.device)  # (B, N, C)
        mask = None if mask is None else mask.to(self.device)  # (B, N)
        with inference_autocast(self.device, self.precision):
            return beam_search(self.model.decoder, self.model.positions(features), mask, decoding,
                               self.vocab.special)

    def captions(
        self, features: torch.Tensor, mask: torch.Tensor | None, decoding: DecodingConfig
    ) -> list[str]:
        """The best caption of each item."""
        return [self.vocab.decode(beams[0].tokens) for beams in self.hypotheses(features, mask, decoding)]
