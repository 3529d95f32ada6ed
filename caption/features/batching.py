"""Batches of images decoded in DataLoader workers; a file that cannot be read is reported, not raised."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from caption.data.images import ImageInput, ImageLoadError, ImageTransform


class _Images(Dataset):
    def __init__(self, items: Sequence[ImageInput], transform: ImageTransform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            return index, self.transform.load(self.items[index]), None
        except ImageLoadError as err:
            return index, None, err


def _collate(items):
    good = [(i, image) for i, image, _ in items if image is not None]
    images = torch.stack([image for _, image in good]) if good else None  # (B, 3, S, S)
    errors = {i: err for i, image, err in items if image is None}
    return [i for i, _ in good], images, errors


def iter_image_batches(
    items: Sequence[ImageInput],
    transform: ImageTransform,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, ImageLoadError]]]:
    """Yield ``(indices, images (B, 3, S, S) or None, {index: error})`` in input order."""
    workers = num_workers if all(isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") for item in items) else 0
    loader = DataLoader(
        _Images(items, transform), batch_size=batch_size, num_workers=min(workers, len(items)),
        collate_fn=_collate, pin_memory=pin_memory,
        # A private generator: iterating must not consume the global RNG (resumed runs replay it exactly).
        generator=torch.Generator(),
    )
    yield from loader
