"""Turn what a user names on the command line (files, folders, globs, a file list) into the files to caption."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from caption.data.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """A named input matches nothing: most likely a typo, so the run stops before it starts."""


@dataclass
class Discovered:
    files: list[str] = field(default_factory=list)  # in order, each once
    ignored: int = 0  # files inside folders skipped because their extension is not an image's or a video's

    def add(self, path: str) -> None:
        if path not in self._seen:
            self._seen.add(path)
            self.files.append(path)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.files)


def is_media_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MEDIA_EXTENSIONS


def read_file_list(path: str | Path) -> list[str]:
    """One path per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"cannot read the file list {path}: {err.strerror or err}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def discover(inputs: Iterable[str], file_lists: Iterable[str] = ()) -> Discovered:
    """Expand ``inputs`` into files: a folder contributes its images and videos, recursively and sorted; a glob its
    matches (``**`` recurses); a file itself, whatever its extension. Paths from ``file_lists`` are taken
    as given, so a missing one is reported with the other bad files instead of stopping the run."""
    found = Discovered()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if is_media_name(child):
                    found.add(str(child))
                else:
                    found.ignored += 1
        elif path.exists():
            found.add(item)
        elif GLOB_CHARS & set(item):
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{item}: the pattern matches no files")
            for match in matches:
                found.add(match)
        else:
            raise InputError(f"{item}: no such file or folder")
    for file_list in file_lists:
        for line in read_file_list(file_list):
            found.add(line)
    return found
