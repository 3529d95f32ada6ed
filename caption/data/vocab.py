"""Tokenisation and the word vocabulary, saved as plain JSON beside the model weights."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from caption.utils.io import atomic_write_json, read_json

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
VOCAB_FORMAT = 1

# Words, numbers and English clitics ("'s"); hyphens and other punctuation split words.
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|'[a-z]+")


def tokenize(text: str) -> list[str]:
    """Lower-case and split a caption; punctuation is dropped ("A dog's ball." -> a, dog's, ball)."""
    return _TOKEN_PATTERN.findall(text.lower())


@dataclass(frozen=True)
class SpecialTokens:
    """The ids decoding needs: where a caption starts and ends, and what it may never say."""

    pad: int
    bos: int
    eos: int
    banned: tuple[int, ...]  # never emitted: <pad>, <bos> and <unk> (a caption never says "<unk>")


@dataclass
class Vocabulary:
    """Word <-> id mapping with ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3."""

    words: list[str]
    min_count: int = 1
    max_length: int = 20

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        self.index = {word: i for i, word in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("a vocabulary must not repeat a word")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def special(self) -> SpecialTokens:
        return SpecialTokens(self.pad_id, self.bos_id, self.eos_id, (self.pad_id, self.bos_id, self.unk_id))

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5, max_length: int = 20) -> Vocabulary:
        """Keep the words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for text in captions for word in tokenize(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + kept, min_count=min_count, max_length=max_length)

    def extended(self, captions: Iterable[str], min_count: int) -> Vocabulary:
        """This vocabulary with the words of ``captions`` seen at least ``min_count`` times that it lacks
        appended, most frequent first (ties alphabetical): every old word keeps its id."""
        counts = Counter(word for text in captions for word in tokenize(text))
        new = sorted((w for w, c in counts.items() if c >= min_count and w not in self.index),
                     key=lambda w: (-counts[w], w))
        return Vocabulary(self.words + new, min_count=self.min_count, max_length=self.max_length)

    def encode(self, text: str) -> list[int]:
        """``<bos> w1 ... wn <eos>``, with at most ``max_length`` words and rare words as ``<unk>``."""
        ids = [self.index.get(word, self.unk_id) for word in tokenize(text)[: self.max_length]]
        return [self.bos_id, *ids, self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``, skipping ``<bos>`` and ``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.words[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "min_count": self.min_count,
            "max_length": self.max_length,
            "words": self.words,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "vocabulary") -> Vocabulary:
        if (
            not isinstance(data, dict)
            or data.get("format") != VOCAB_FORMAT
            or not isinstance(data.get("words"), list)
        ):
            raise ValueError(
                f"{source} is not a vocabulary file of format {VOCAB_FORMAT} (needs 'format' and 'words')"
            )
        try:
            return cls(
                list(data["words"]), min_count=int(data["min_count"]), max_length=int(data["max_length"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: missing or bad vocabulary field ({err})") from None

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(read_json(path, "vocabulary file"), source=str(path))
