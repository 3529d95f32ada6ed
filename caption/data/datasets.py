"""Training datasets over cached features or raw images, and a resumable sampler.

An item is an image with all of its captions (as in self-critical.pytorch's ``seq_per_img``): the decoder
projects each image's features once for its five captions instead of five times.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from caption.data.coco import CaptionSet
from caption.data.images import ImageLoadError, ImageTransform
from caption.data.vocab import Vocabulary
from caption.utils.logging import logger


def image_captions(
    captions: CaptionSet, vocab: Vocabulary, usable: np.ndarray | None = None,
) -> list[tuple[int, list[list[int]]]]:
    """(image index, token ids of each of its captions) for every usable image with a caption."""
    items = []
    for index, image_id in enumerate(captions.image_ids):
        texts = captions.captions.get(image_id, [])
        if texts and (usable is None or usable[index]):
            items.append((index, [vocab.encode(text) for text in texts]))
    return items


def pad_captions(token_lists: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    longest = max(len(tokens) for tokens in token_lists)
    batch = torch.full((len(token_lists), longest), pad_id, dtype=torch.long)  # (M, L)
    for row, tokens in enumerate(token_lists):
        batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch


def collate_items(items: list[tuple[torch.Tensor | None, list[list[int]]]]):
    """Stack the items that loaded; all captions of an item share its row: (inputs, captions, item_index)."""
    items = [item for item in items if item[0] is not None]
    if not items:
        return None
    inputs = torch.stack([inputs for inputs, _ in items])  # (B, N, C) or (B, 3, S, S)
    token_lists = [tokens for _, captions in items for tokens in captions]
    item_index = torch.tensor([row for row, (_, captions) in enumerate(items) for _ in captions])  # (M,)
    return inputs, pad_captions(token_lists), item_index  # ..., (M, L), (M,)


class FeatureCaptionDataset(Dataset):
    """One item per image: its cached (N, C) features, read from the memory-mapped fp16 array, and its
    captions."""

    def __init__(self, features: np.ndarray, items: list[tuple[int, list[list[int]]]]):
        self.features = features
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        row, captions = self.items[index]
        return torch.from_numpy(np.asarray(self.features[row], dtype=np.float32)), captions  # (N, C)


class ImageCaptionDataset(Dataset):
    """One item per image, decoded from its file (for a fine-tuned encoder); a bad file is reported and
    skipped."""

    def __init__(
        self, captions: CaptionSet, items: list[tuple[int, list[list[int]]]], transform: ImageTransform,
    ):
        self.paths = [str(p) for p in captions.paths()]
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        row, captions = self.items[index]
        try:
            return self.transform.load(self.paths[row]), captions  # (3, S, S)
        except ImageLoadError as err:
            logger.warning("skipped a training image: %s", err)
            return None, captions


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way into an epoch, so a resumed run sees exactly the
    samples the interrupted one had not yet used (the order is a function of seed and epoch only)."""

    def __init__(
        self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False,
        )
        self.start = 0

    def set_start(self, consumed: int) -> None:
        """Skip the first ``consumed`` samples of this rank's share of the current epoch."""
        self.start = consumed

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class WeightedSetSampler(Sampler[int]):
    """Samples over several data sets concatenated (``torch.utils.data.ConcatDataset`` order) by weight.

    An epoch draws round(weight x size) items of each set: every item once per whole unit of the weight,
    then a random subset for the fraction (0.5: a random half, drawn afresh each epoch). The draws are
    shuffled together and dealt to the ranks as ``DistributedSampler`` does (padded to a multiple of the
    world size). The order is a function of seed and epoch only, and ``set_start`` skips what a resumed run
    already used, as in ``ResumableDistributedSampler``.
    """

    def __init__(self, set_sizes: Sequence[int], weights: Sequence[float], *, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0):
        self.set_sizes = list(set_sizes)
        self.draws = [round(weight * size) for size, weight in zip(set_sizes, weights)]
        self.offsets = np.cumsum([0, *self.set_sizes[:-1]]).tolist()
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.total = sum(self.draws)
        if self.total == 0:
            raise ValueError("the data set weights leave nothing to draw in an epoch: raise a weight")
        self.num_samples = math.ceil(self.total / num_replicas)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, consumed: int) -> None:
        self.start = consumed

    def epoch_indices(self) -> list[int]:
        """This epoch's draws over all ranks, in order, before padding and dealing."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        picks = []
        for offset, size, draws in zip(self.offsets, self.set_sizes, self.draws):
            whole, rest = divmod(draws, size) if size else (0, 0)
            picks += [offset + torch.randperm(size, generator=generator) for _ in range(whole)]
            if rest:
                picks.append(offset + torch.randperm(size, generator=generator)[:rest])
        drawn = torch.cat(picks)
        return drawn[torch.randperm(len(drawn), generator=generator)].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        padded = self.num_samples * self.num_replicas
        # as DistributedSampler: repeat from the start to fill every rank's share
        while len(indices) < padded:
            indices += indices[: padded - len(indices)]
        return iter(indices[self.rank : padded : self.num_replicas][self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
