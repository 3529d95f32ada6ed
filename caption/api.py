"""The one-call API: ``Captioner.load(name_or_path).caption(inputs, beam_size=3)``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caption.config import DecodingConfig
from caption.data.images import ImageInput, describe
from caption.data.video import MAX_VIDEO_SECONDS, Frames, detect_scenes, is_video, read_frames
from caption.data.vocab import Vocabulary
from caption.decoding.beam import Hypothesis
from caption.decoding.predictor import Predictor
from caption.errors import ErrorKind, ImageLoadError, VideoLoadError
from caption.features.batching import iter_image_batches
from caption.models import DEFAULT_MODEL
from caption.models.captioner import CaptionModel
from caption.models.io import is_model_dir, load_model, resolve_run_dir
from caption.settings import DecodingLimits, decoding_settings, video_sampling

logger = logging.getLogger("caption.api")

MODELS_ENV = "CAPTION_MODELS_DIR"


@dataclass
class CaptionResult:
    """One item's caption. ``error`` is set (and ``text`` is None) when the item could not be read."""

    source: str
    text: str | None = None
    score: float | None = None  # length-normalised log-probability of the caption
    words: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # (len(words), N): attention over the N feature positions
    grid: tuple[int, int] = (0, 0)  # the N positions as (rows, cols) of the image
    beams: list[dict[str, Any]] = field(default_factory=list)  # every beam: {"text", "score"}, best first
    error: str | None = None
    error_kind: str | None = None  # why, as a ``caption.errors.ErrorKind`` value
    # videos: the sampled frames' times (s); N = frames x cells
    times: list[float] = field(default_factory=list)
    segment: tuple[float, float] | None = None  # a video scene's (start, end) in seconds

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, err: ImageLoadError) -> CaptionResult:
        return cls(source=err.source, error=err.reason, error_kind=err.kind.value)

    def raise_error(self) -> None:
        if self.error is not None:
            raise ImageLoadError(self.source, self.error, self.error_kind or ErrorKind.CORRUPT)

    def to_dict(self, attention: bool = False) -> dict[str, Any]:
        """The result as JSON: what ``caption predict --format json``, both batch engines and the web demo
        write. ``attention`` adds the words, their attention maps (rows: words) and the grid they cover."""
        data: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            data.update(error=self.error, error_kind=self.error_kind)
            return data
        data.update(caption=self.text, score=round(self.score, 4), beams=self.beams)
        if self.segment is not None:
            data.update(start=self.segment[0], end=self.segment[1])
        if self.times:
            data["frame_times"] = self.times
        if attention and self.attention is not None:
            data["words"] = self.words
            data["attention"] = np.round(self.attention, 4).tolist()  # (words, N) over a rows x cols grid
            data["grid"] = list(self.grid)
        return data


def resolve_model(name_or_path: str | Path = DEFAULT_MODEL) -> Path:
    """A model directory, a training run (its best checkpoint), or the name of a shipped model."""
    path = Path(name_or_path)
    if path.exists():
        return resolve_run_dir(path)
    roots = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    roots.append(Path(__file__).resolve().parents[1] / "models")
    for root in roots:
        if is_model_dir(root / str(name_or_path)):
            return root / str(name_or_path)
    known = sorted({d.name for root in roots if root.is_dir() for d in root.iterdir() if is_model_dir(d)})
    raise FileNotFoundError(
        f"no model {str(name_or_path)!r}: not a path, and not a model name in {', '.join(map(str, roots))} "
        f"(known names: {', '.join(known) or 'none'})"
    )


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Captioner:
    """A loaded model ready to caption images; see ``caption()``."""

    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocabulary,
        device: str | torch.device = "auto",
        meta: dict | None = None,
        precision: str = "auto",
    ):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.meta = meta or {}
        self.predictor = Predictor(self.model, vocab, self.device, precision)
        self.transform = self.predictor.transform
        cfg = model.encoder_cfg
        self.grid = (cfg.grid_size, cfg.grid_size)
        self.path: Path | None = None  # the model directory, when loaded from one
        # Decoding defaults: the model's own (config.json "decoding"), else beam 3 and plain length
        # normalisation.
        self.decoding = DecodingConfig(**{"max_length": vocab.max_length, **self.meta.get("decoding", {})})
        self.num_frames = self.predictor.frames_per_video

    def resolve_decoding(self, values: Mapping[str, Any] | None = None, /, *,
                         limits: DecodingLimits | None = None, **settings: Any) -> DecodingConfig:
        """The decoding settings to use: those given (as a mapping or as keywords: ``beam_size=5``), the
        model's defaults for the rest. A value out of range (or beyond ``limits``) raises ``ParameterError``
        naming it; a name that is no decoding setting, ``TypeError``."""
        return decoding_settings(self.decoding, {**(values or {}), **settings}, limits)

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "auto",
             precision: str = "auto") -> Captioner:
        """A shipped model by name, a model directory or a training run (its best checkpoint).
        ``precision``: ``auto`` (bf16 or fp16 on a GPU, fp32 on a CPU), ``fp32``, or ``bf16`` (about 1.3x
        faster on a CPU with AMX, but a quarter of the captions change); see
        ``caption.utils.runtime.inference_dtype``."""
        directory = resolve_model(name_or_path)
        model, vocab, meta = load_model(directory)
        model.encoder.fold_batchnorm()  # this model is only ever used to caption
        captioner = cls(model, vocab, device, meta, precision)
        captioner.path = directory
        return captioner

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S), already normalised, to features (B, N, C) in fp32."""
        return self.predictor.encode(images)

    def caption_features(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        sources: Sequence[str] | None = None,
        decoding: DecodingConfig | None = None,
    ) -> list[CaptionResult]:
        """Caption precomputed encoder features (B, N, C): all items and all beams in one batched search
        (``decoding``: see ``resolve_decoding``; None: the model's defaults)."""
        hypotheses = self.predictor.hypotheses(features, mask, decoding or self.decoding)
        sources = sources or [f"item {i}" for i in range(len(hypotheses))]
        return [self._result(source, beams) for source, beams in zip(sources, hypotheses)]

    def _result(self, source: str, beams: list[Hypothesis]) -> CaptionResult:
        best = beams[0]
        words = [self.vocab.words[t] for t in best.tokens]
        return CaptionResult(
            source=source,
            text=" ".join(words),
            score=best.score,
            words=words,
            attention=best.attention,
            grid=self.grid,
            beams=[{"text": self.vocab.decode(b.tokens), "score": round(b.score, 4)} for b in beams],
        )

    def encode_frames(self, frames: Frames) -> torch.Tensor:
        """A video's sampled frames through the encoder: (1, F*N, C), frame after frame."""
        images = torch.stack([self.transform(image) for image in frames.images])  # (F, 3, S, S)
        features = self.encode(images)  # (F, N, C)
        return features.reshape(1, -1, features.shape[-1])  # (1, F*N, C)

    def caption_video(
        self,
        path: str | Path,
        *,
        num_frames: int | None = None,
        every_seconds: float | None = None,
        scenes: bool = False,
        max_seconds: float = MAX_VIDEO_SECONDS,
        decoding: DecodingConfig | None = None,
    ) -> list[CaptionResult]:
        """Caption a video from ``num_frames`` frames (default: the model's) or one every ``every_seconds``;
        with ``scenes``, one caption per scene (see ``detect_scenes``), else one for the whole video.
        An image model attends over the union of the frames' grid cells (zero-shot); a video model also
        knows each cell's frame. Raises ``VideoLoadError`` naming the file."""
        sampling = video_sampling(num_frames, every_seconds)
        spans = detect_scenes(path, max_seconds=max_seconds) if scenes else [(0.0, None)]
        results = []
        for start, end in spans:
            frames = read_frames(path, sampling["num_frames"] or self.num_frames, sampling["every_seconds"],
                                 start=start, end=end, max_seconds=max_seconds)
            features = self.encode_frames(frames)  # (1, F*N, C)
            [result] = self.caption_features(features, sources=[str(path)], decoding=decoding)
            result.times = frames.times
            if scenes:
                result.segment = (start, end)
            results.append(result)
        return results

    def iter_captions(
        self,
        inputs: Sequence[ImageInput],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        num_workers: int | None = None,
        num_frames: int | None = None,
        every_seconds: float | None = None,
        max_video_seconds: float = MAX_VIDEO_SECONDS,
    ) -> Iterator[CaptionResult]:
        """Caption ``inputs`` (images, and video files by extension) in order, one result each; images go
        in batches, a video is one batch of its frames (``num_frames`` or one every ``every_seconds``).
        Unreadable inputs yield a result with ``error`` set instead of stopping the others. Settings are
        checked before anything is read: a bad one raises ``ParameterError``."""
        settings = decoding or self.decoding
        video = {**video_sampling(num_frames, every_seconds), "max_seconds": max_video_seconds}
        image_positions = [i for i, item in enumerate(inputs) if not is_video(item)]
        image_results = self._iter_image_captions([inputs[i] for i in image_positions], settings, batch_size,
                                                  num_workers)
        ready: dict[int, CaptionResult] = {}
        next_image = iter(image_positions)
        for position, item in enumerate(inputs):
            if is_video(item):
                yield self._caption_one_video(item, video, settings)
                continue
            while position not in ready:  # pull the image batch that holds this input
                for result in next(image_results):
                    ready[next(next_image)] = result
            yield ready.pop(position)

    def _caption_one_video(self, item: str | Path, video: dict, decoding: DecodingConfig) -> CaptionResult:
        try:
            return self.caption_video(item, **video, decoding=decoding)[0]
        except ImageLoadError as err:
            return CaptionResult.failed(err)
        except Exception as err:  # noqa: BLE001 - an unforeseen failure on one file must not stop the others
            logger.exception("captioning the video %s failed", item)
            return CaptionResult.failed(VideoLoadError(
                str(item), f"captioning it failed ({type(err).__name__}: {err})", ErrorKind.SERVER))

    def _iter_image_captions(self, images: Sequence[ImageInput], decoding: DecodingConfig, batch_size: int,
                             num_workers: int | None) -> Iterator[list[CaptionResult]]:
        """One list of results per batch of ``images``, in order."""
        batches = iter_image_batches(
            images, self.transform, device=self.device, batch_size=batch_size, num_workers=num_workers,
        )
        for indices, tensors, errors in batches:
            results: dict[int, CaptionResult] = {i: CaptionResult.failed(err) for i, err in errors.items()}
            if tensors is not None:
                features = self.encode(tensors)  # (B, N, C)
                sources = [describe(images[i]) for i in indices]
                results.update(zip(indices, self.caption_features(features, sources=sources,
                                                                  decoding=decoding)))
            yield [results[i] for i in sorted(results)]

    def caption(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        num_workers: int | None = None,
        num_frames: int | None = None,
        every_seconds: float | None = None,
        skip_errors: bool = False,
        **settings: Any,
    ) -> CaptionResult | list[CaptionResult]:
        """Caption one input or a list of them (file paths, PIL images or numpy arrays; video files are
        captioned from sampled frames, see ``caption_video``).

        Decoding: ``decoding`` (default: the model's), with any of its public settings given as keywords
        (``beam_size=5, length_penalty=0.75``: see ``DecodingConfig``). One input gives one
        ``CaptionResult``; a list gives a list in the same order. An unreadable input raises
        ``ImageLoadError`` naming it, unless ``skip_errors`` is set: then its result has ``error`` set and
        every other input is still captioned. Bad settings raise ``ParameterError``.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        chosen = decoding_settings(decoding or self.decoding, settings)
        results = list(self.iter_captions(
            items, decoding=chosen, batch_size=batch_size, num_workers=num_workers, num_frames=num_frames,
            every_seconds=every_seconds,
        ))
        if not skip_errors:
            for result in results:
                result.raise_error()
        return results[0] if single else results
