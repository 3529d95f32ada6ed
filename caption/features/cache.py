"""Encode each image once and keep its features on disk (fp16, memory-mapped) for decoder training.

Layout: ``<cache_dir>/<encoder cache key>/<image-set hash>.npy`` holds an (M, N, C) fp16 array (for videos
sampled at F frames, ``<hash>-f<F>.npy`` holds (M, F*N, C)) and
``.json`` beside it lists the M image files and which of them could not be read. The encoder key hashes
everything that changes the features (model, weights, image size, grid, normalisation), and the image-set
hash covers each file's path, size and modification time, so a stale cache is never picked up.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from caption.data.images import ImageTransform
from caption.data.video import VideoTransform
from caption.features.batching import iter_image_batches
from caption.features.encoder import ImageEncoder
from caption.utils.io import atomic_write, atomic_write_json, read_json, reserve_space
from caption.utils.logging import logger
from caption.utils.runtime import inference_autocast


@dataclass
class CachedFeatures:
    """Features for a list of images: ``features[i]`` is (N, C) fp16; ``valid[i]`` is False for unreadable
    files."""

    paths: list[str]
    features: np.ndarray  # (M, N, C) float16, memory-mapped
    valid: np.ndarray  # (M,) bool
    errors: dict[str, str]


def image_set_hash(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}\tmissing\n".encode())
    return digest.hexdigest()[:20]


@torch.inference_mode()
def encode_images(
    encoder: ImageEncoder,
    paths: list[str],
    out: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int | None = None,
    frames: int = 0,
    desc: str = "encoding images",
) -> dict[int, str]:
    """Write the features of ``paths`` into ``out[i]`` (videos, when ``frames``: their F frames' features one
    after another); returns {index: error} for files that could not be read."""
    transform = ImageTransform(encoder.cfg.image_size, encoder.cfg.mean, encoder.cfg.std)
    if frames:
        transform = VideoTransform(transform, frames)
        batch_size = max(1, batch_size // frames)  # the encoder sees batch_size frames at a time
    # A copy with its BatchNorm folded into the convolutions: the same features to float rounding (far
    # below the cache's fp16), 1.45x faster on a CPU; the encoder itself may still be fine-tuned.
    encoder = copy.deepcopy(encoder).eval()
    encoder.fold_batchnorm()
    errors: dict[int, str] = {}
    autocast = inference_autocast(device, "auto" if device.type == "cuda" else "fp32")
    batches = iter_image_batches(
        paths, transform, device=device, batch_size=batch_size, num_workers=num_workers,
    )
    with tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for indices, images, batch_errors in batches:
            errors.update({i: str(err) for i, err in batch_errors.items()})
            if images is not None:
                images = images.to(device, non_blocking=True)  # (B, 3, S, S), or (B, F, 3, S, S) for videos
                with autocast:
                    features = encoder(images.flatten(0, 1) if frames else images)  # (B or B*F, N, C)
                features = features.reshape(len(indices), -1, features.shape[-1])  # (B, N or F*N, C)
                out[indices] = features.float().cpu().numpy().astype(np.float16)
            bar.update(len(indices) + len(batch_errors))
    return errors


class FeatureCache:
    def __init__(self, root: str | Path, encoder: ImageEncoder, frames: int = 0):
        self.encoder = encoder
        self.frames = frames  # videos sampled at this many frames; 0 for images
        self.dir = Path(root) / encoder.cache_key()

    def _files(self, paths: list[str]) -> tuple[Path, Path]:
        stem = image_set_hash(paths) + (f"-f{self.frames}" if self.frames else "")
        return self.dir / f"{stem}.npy", self.dir / f"{stem}.json"

    def load(self, paths: list[str]) -> CachedFeatures | None:
        array_file, index_file = self._files(paths)
        if not (array_file.is_file() and index_file.is_file()):
            return None
        index = read_json(index_file, "feature cache index")
        if index.get("paths") != paths:
            return None
        features = np.load(array_file, mmap_mode="r")
        return CachedFeatures(paths, features, np.asarray(index["valid"], dtype=bool), index["errors"])

    def get_or_build(
        self, paths: list[str], *, device: torch.device, batch_size: int = 64, num_workers: int | None = None
    ) -> CachedFeatures:
        """Return cached features for ``paths``, encoding them first if no matching cache exists."""
        paths = [str(p) for p in paths]
        cached = self.load(paths)
        if cached is not None:
            logger.info("feature cache hit: %s (%d images)", self._files(paths)[0], len(paths))
            return cached
        array_file, index_file = self._files(paths)
        shape = (len(paths), max(self.frames, 1) * self.encoder.num_positions, self.encoder.feature_dim)
        logger.info("building feature cache %s: %d images -> %s fp16", array_file, len(paths), shape)
        errors: dict[int, str] = {}

        def write(tmp: Path) -> None:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            try:
                reserve_space(tmp)  # all of it now: a full disk is an error here, not a SIGBUS mid-encoding
            except OSError:
                del array
                raise
            errors.update(encode_images(
                self.encoder, paths, array, device=device, batch_size=batch_size, num_workers=num_workers,
                frames=self.frames, desc="encoding video frames" if self.frames else "encoding images",
            ))
            array.flush()
            del array

        atomic_write(array_file, write)
        for error in list(errors.values())[:10]:
            logger.warning("skipped an unreadable image: %s", error)
        if len(errors) > 10:
            logger.warning("... and %d more unreadable images", len(errors) - 10)
        valid = [i not in errors for i in range(len(paths))]
        atomic_write_json(index_file, {
            "paths": paths,
            "valid": valid,
            "errors": {paths[i]: e for i, e in errors.items()},
            "shape": list(shape),
            "encoder": self.encoder.cfg.name,
        })
        cached = self.load(paths)
        assert cached is not None
        return cached
