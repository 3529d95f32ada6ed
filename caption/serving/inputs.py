"""Turn what a user names on the command line (files, folders, globs, a file list) into the files to
caption."""

from __future__ import annotations

import csv
import glob
import io
import os
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
    skipped_folders: list[tuple[str, str]] = field(default_factory=list)  # (folder, why it was not searched)

    def add(self, path: str) -> None:
        if path not in self._seen:
            self._seen.add(path)
            self.files.append(path)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.files)


def is_media_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MEDIA_EXTENSIONS


LISTING_COLUMN = "path"


def read_file_list(path: str | Path) -> list[str]:
    """One path per line (blank lines and lines starting with # are skipped), or a CSV or Parquet listing
    with a ``path`` column, as exported from a table of an archive."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".parquet":
            return _listing_column(path, _parquet_columns(path))
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read the file list {path}: {err.strerror or err}") from None
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        header = rows[0] if rows else []
        columns = {name.strip(): [row[i] if i < len(row) else "" for row in rows[1:]]
                   for i, name in enumerate(header)}
        return _listing_column(path, columns)
    lines = text.splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _parquet_columns(path: str | Path) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading a Parquet listing needs pyarrow: pip install pyarrow "
                         "(it comes with 'caption[ray]')") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _listing_column(path: str | Path, columns: dict[str, list]) -> list[str]:
    if LISTING_COLUMN not in columns:
        raise InputError(f"{path}: a listing needs a {LISTING_COLUMN!r} column with the files; its columns "
                         f"are {', '.join(map(repr, columns)) or 'none'}")
    return [
        str(value).strip() for value in columns[LISTING_COLUMN] if value is not None and str(value).strip()
    ]


def discover(inputs: Iterable[str], file_lists: Iterable[str] = ()) -> Discovered:
    """Expand ``inputs`` into files: a folder contributes its images and videos, recursively (through linked
    folders too, each searched once) and sorted; a glob its matches (``**`` recurses); a file itself, whatever
    its extension. Broken and looping links are kept as files, so they are reported with the other bad files
    instead of vanishing. Paths from ``file_lists`` are taken as given, for the same reason."""
    found = Discovered()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in _search(path, found):
                found.add(child)
        elif os.path.lexists(item):  # a file, or a link that leads nowhere: captioned or reported per file
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


def _search(folder: Path, found: Discovered) -> list[str]:
    """The media files under ``folder``, sorted by path. Linked folders are followed, but a folder reached
    again (a link back to a parent, or two links to one place) is searched once and noted in ``found``."""
    media: list[str] = []
    searched: set[tuple[int, int]] = set()
    pending = [str(folder)]
    while pending:
        directory = pending.pop()
        try:
            info = os.stat(directory)
            entries = list(os.scandir(directory))
        except OSError as err:
            found.skipped_folders.append((directory, f"cannot be listed ({err.strerror or err})"))
            continue
        if (info.st_dev, info.st_ino) in searched:
            found.skipped_folders.append((directory, f"a link to {os.path.realpath(directory)}, which is "
                                                     "searched already; not searched twice"))
            continue
        searched.add((info.st_dev, info.st_ino))
        for entry in entries:
            if _is(entry.is_dir):
                pending.append(entry.path)
            elif (_is(entry.is_file) or entry.is_symlink()) and is_media_name(entry.name):
                media.append(entry.path)  # a broken or looping link with an image's name is reported as bad
            else:
                found.ignored += 1
    return sorted(media, key=lambda p: Path(p).parts)


def _is(check) -> bool:
    try:
        return check()
    except OSError:  # a link loop, or a permission error on the target
        return False
