"""Captions in the formats people already have -> COCO caption JSON, one file per split (``caption prepare
table``): CSV or TSV with an image and a caption column (several rows per image; a comma-separated
``.txt`` such as Flickr8k's ``captions.txt`` is read as CSV), JSON Lines (a record per
caption or per image, ``{"image": ..., "captions": [...]}``), Parquet as the ``datasets`` library and the
Hub store it (an image column of ``{bytes, path}`` structs), and a Hugging Face ``imagefolder`` (images
with ``metadata.jsonl`` or ``metadata.csv`` beside them).

Every row is checked before anything is written: a missing image, an empty caption, an unreadable row, one
image under two names and an image in two splits are all reported, each with its file and line or row and
what to do, and then nothing is written. The outputs appear atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caption.data.convert import IMAGE_SUFFIXES, SPLIT_NAMES, _image_ids, _write_split
from caption.utils.io import atomic_write
from caption.utils.logging import logger

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Column names guessed when none is given, most specific first (Flickr8k's captions.txt is image,caption;
# Hugging Face imagefolder uses file_name and a text column).
IMAGE_COLUMNS = ("image", "file_name", "filename", "image_path", "image_file", "path", "file", "img")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "sentences", "description", "raw")
SPLIT_COLUMNS = ("split",)
SPLIT_ALIASES = {**SPLIT_NAMES, "validation": "dev", "valid": "dev", "val": "dev"}
MAX_REPORTED = 20  # problems listed in the error; the rest are counted


class TableError(ValueError):
    """The table cannot be prepared; the message lists every problem found, each with where and what to do."""


@dataclass
class Row:
    where: str  # "file:line" or "file: row N"
    values: dict[str, Any]


@dataclass
class Prepared:
    captions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # by file name
    split_of: dict[str, str] = field(default_factory=dict)
    first_row: dict[str, str] = field(default_factory=dict)
    image_bytes: dict[str, bytes] = field(default_factory=dict)  # images to write, by file name
    missing: dict[str, list[str]] = field(default_factory=dict)  # image name -> the rows that name it
    problems: list[str] = field(default_factory=list)


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a CSV, TSV, JSON Lines or Parquet file, each with where it is."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for values in reader:
                yield Row(f"{path}:{reader.line_num}", values)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        values = json.loads(line)
                    except json.JSONDecodeError as err:
                        values = {"__unreadable__": f"not JSON ({err.msg})"}
                    if not isinstance(values, dict):
                        values = {"__unreadable__": "not a JSON object"}
                    yield Row(f"{path}:{number}", values)
    elif suffix == ".parquet":
        pq = _parquet()
        for number, values in enumerate(pq.read_table(path).to_pylist()):
            yield Row(f"{path}: row {number}", values)
    else:
        raise TableError(f"{path}: not a table caption prepare reads; use .csv (or a comma-separated .txt, "
                         "as Flickr8k's captions.txt), .tsv, .jsonl or .parquet, or a folder of images with "
                         f"{' or '.join(METADATA_FILES)}")


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TableError("reading Parquet needs pyarrow: pip install 'caption[parquet]'") from None
    return pq


def _columns(path: Path) -> list[str]:
    """The column names a table declares (its header, schema, or first record's keys)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])
    if suffix == ".parquet":
        return list(_parquet().read_schema(path).names)
    for row in read_rows(path):
        if "__unreadable__" not in row.values:
            return list(row.values)
    return []


def _pick(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if given is not None:
        if given not in columns:
            raise TableError(f"{path}: no column {given!r} for the {what}; its columns are "
                             f"{', '.join(map(repr, columns)) or 'none'}")
        return given
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise TableError(f"{path}: cannot tell which column holds the {what} (looked for "
                     f"{', '.join(candidates)}); its columns are {', '.join(map(repr, columns)) or 'none'}: "
                     f"name it with --{what.split()[0]}-column")


def _image_name(value: Any, where: str, images: Path, prepared: Prepared,
                written: Path | None) -> str | None:
    """The file name (relative to the images folder) of one row's image, or None after a problem."""
    if isinstance(value, dict):  # a datasets Image: {"bytes": ..., "path": ...}
        data, name = value.get("bytes"), value.get("path")
        if data is None:
            value = name
        else:
            if written is None:
                prepared.problems.append(f"{where}: the image is stored in the table: give --images-out, a "
                                         "folder to write the images to")
                return None
            stem = Path(name).name if name else hashlib.sha1(data).hexdigest()[:16]
            if not stem.lower().endswith(IMAGE_SUFFIXES):
                stem += _suffix_of(data)
            if prepared.image_bytes.get(stem, data) != data:
                prepared.problems.append(f"{where}: two different images are both named {stem!r}: rename one")
                return None
            prepared.image_bytes[stem] = data
            return stem
    if not isinstance(value, str) or not value.strip():
        prepared.problems.append(f"{where}: no image named (got {value!r}): fill in the image column or "
                                 "delete the row")
        return None
    name = value.strip()
    if name in prepared.missing or not (images / name).is_file():
        prepared.missing.setdefault(name, []).append(where)
        return None
    return name


def _suffix_of(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return "." + (image.format or "jpg").lower().replace("jpeg", "jpg")
    except Exception:  # noqa: BLE001 - its caption pass reports it as a bad image; the name only needs a suffix
        return ".jpg"


def _captions(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def collect(rows: Iterator[Row], *, images: Path, image_column: str, caption_column: str,
            split_column: str | None, written: Path | None) -> Prepared:
    """Every row's image, captions and split, with every problem found."""
    prepared = Prepared()
    for row in rows:
        if "__unreadable__" in row.values:
            prepared.problems.append(f"{row.where}: unreadable row: {row.values['__unreadable__']}: fix or "
                                     "delete the line")
            continue
        name = _image_name(row.values.get(image_column), row.where, images, prepared, written)
        if name is None:
            continue
        texts = _captions(row.values.get(caption_column))
        if not texts:
            prepared.problems.append(f"{row.where}: no caption for {name}: write one or delete the row")
        for text in texts:
            if not isinstance(text, str) or not " ".join(text.split()):
                prepared.problems.append(f"{row.where}: empty caption for {name}: write it or delete the row")
        texts = [" ".join(t.split()) for t in texts if isinstance(t, str) and t.strip()]
        if split_column is not None:
            split = str(row.values.get(split_column) or "").strip().lower()
            split = SPLIT_ALIASES.get(split, split)
            if not split:
                prepared.problems.append(f"{row.where}: no split for {name} in column {split_column!r}")
            elif prepared.split_of.setdefault(name, split) != split:
                prepared.problems.append(f"{row.where}: {name} is in split {split!r} here but "
                                         f"{prepared.split_of[name]!r} at {prepared.first_row[name]}: an "
                                         "image belongs to one split")
        prepared.first_row.setdefault(name, row.where)
        prepared.captions[name].extend(texts)
    for name, rows in prepared.missing.items():  # once per image, however many rows name it
        also = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
        prepared.problems.append(f"{rows[0]}: image {name!r} not found in {images}{also}: fix the name, or "
                                 "give the folder that holds it with --images")
    return prepared


def _duplicates(prepared: Prepared, images: Path) -> None:
    """One image under two names would be in two places of the data (and perhaps two splits)."""
    seen: dict[str, str] = {}
    for name in sorted(prepared.captions):
        data = prepared.image_bytes.get(name)
        if data is None:
            data = (images / name).read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            other = seen[digest]
            prepared.problems.append(f"{prepared.first_row[name]}: {name} is the same image as {other} "
                                     f"({prepared.first_row[other]}): give each image one name")
        else:
            seen[digest] = name


def split_by_image(names: list[str], dev_fraction: float, seed: int) -> dict[str, str]:
    """A seeded split of images (never of captions): ``dev_fraction`` of them to dev, the rest to train."""
    if not 0 <= dev_fraction < 1:
        raise TableError(f"--dev-fraction {dev_fraction} is not allowed: choose a fraction from 0 up to 1")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    dev = round(len(order) * dev_fraction)
    if dev_fraction and len(order) > 1:
        dev = max(dev, 1)
    return {name: "dev" if i < dev else "train" for i, name in enumerate(order)}


def prepare_table(
    source: str | Path,
    out_dir: str | Path,
    *,
    images: str | Path | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    split_column: str | None = None,
    dev_fraction: float = 0.1,
    seed: int = 0,
    images_out: str | Path | None = None,
) -> dict[str, Path]:
    """``source`` (a table file, or an imagefolder) -> ``out_dir/captions_<split>.json``; returns them.

    ``images``: the folder the image column is relative to (default: the table's folder). Images stored in
    the table are written to ``images_out`` (which their file names are then relative to). Splits: the
    ``split_column`` (default: a ``split`` column if there is one), else a ``dev_fraction`` of the images,
    chosen with ``seed``. Raises ``TableError`` listing every problem, and then writes nothing."""
    source = Path(source)
    if source.is_dir():
        metadata = next((source / name for name in METADATA_FILES if (source / name).is_file()), None)
        if metadata is None:
            raise TableError(f"{source}: a folder needs {' or '.join(METADATA_FILES)} beside its images "
                             "(Hugging Face imagefolder), with file_name and a caption column")
        table, root = metadata, Path(images) if images else source
    elif source.is_file():
        table, root = source, Path(images) if images else source.parent
    else:
        raise TableError(f"{source}: no such file or folder")
    written = Path(images_out) if images_out else None
    columns = _columns(table)
    image_column = _pick(columns, image_column, IMAGE_COLUMNS, "image column", table)
    caption_column = _pick(columns, caption_column, CAPTION_COLUMNS, "caption column", table)
    if split_column is None:
        split_column = next((c for c in columns if c.lower() in SPLIT_COLUMNS), None)
    elif split_column not in columns:
        _pick(columns, split_column, SPLIT_COLUMNS, "split column", table)
    prepared = collect(read_rows(table), images=root, image_column=image_column,
                       caption_column=caption_column, split_column=split_column, written=written)
    if not prepared.problems:
        _duplicates(prepared, root)
    if prepared.problems:
        more = len(prepared.problems) - MAX_REPORTED
        listed = "\n  ".join(prepared.problems[:MAX_REPORTED])
        raise TableError(f"{table}: {len(prepared.problems)} problem(s), nothing written:\n  {listed}"
                         + (f"\n  ... and {more} more" if more > 0 else ""))

    names = sorted(prepared.captions)
    splits = prepared.split_of if split_column else split_by_image(names, dev_fraction, seed)
    for name, data in prepared.image_bytes.items():  # only now: nothing is written for a bad table
        target = written / name
        if not target.is_file() or target.read_bytes() != data:
            atomic_write(target, lambda tmp, data=data: tmp.write_bytes(data))
    ids = _image_ids(names)
    out = {}
    for split in sorted(set(splits.values())):
        members = [n for n in names if splits[n] == split]
        images_json = [{"id": ids[n], "file_name": n} for n in members]
        pairs = [(ids[n], text) for n in members for text in prepared.captions[n]]
        annotations = [{"id": i, "image_id": image_id, "caption": text}
                       for i, (image_id, text) in enumerate(pairs, 1)]
        out[split] = _write_split(out_dir, split, table.name, images_json, annotations)
    logger.info("images are in %s: give it as the split's images folder (data.train_images, ...)",
                written or root)
    return out
