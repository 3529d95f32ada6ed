"""Caption many files into JSONL, CSV or a COCO results JSON, resumably.

Every result is appended to a journal and flushed as soon as it exists, so a killed run loses at most the
batch in flight; running again with the same output skips every file the journal already holds (captioned
or reported bad). For JSONL and CSV the journal is the output itself; for a COCO results JSON, which
cannot be appended to, it is ``<output>.progress.jsonl`` beside it, and the JSON is rewritten at the end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from caption.api import Captioner
from caption.config import DecodingConfig
from caption.serving.inputs import Discovered
from caption.settings import decoding_settings
from caption.utils.io import atomic_write, atomic_write_json, exclusive_lock

FORMATS = ("jsonl", "csv", "coco")
CSV_FIELDS = ("source", "caption", "score", "error")


def infer_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    formats = {".jsonl": "jsonl", ".csv": "csv", ".json": "coco"}
    if suffix not in formats:
        raise ValueError(f"{path}: cannot tell the output format from the extension; name it .jsonl, .csv "
                         "or .json (COCO results), or pass --format")
    return formats[suffix]


def output_format(output: str | Path, fmt: str | None = None) -> str:
    """``fmt``, or the one the output's extension names; refuses an unknown one."""
    fmt = fmt or infer_format(output)
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def _drop_partial_line(path: Path) -> None:
    """A kill can leave half a record at the end: cut the file back to its last complete line."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


class Journal:
    """The append-only record of a run: one line per file, flushed as written."""

    def __init__(self, path: Path, fmt: str):
        self.path = path
        self.csv = fmt == "csv"

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        _drop_partial_line(self.path)
        with open(self.path, encoding="utf-8", newline="") as handle:
            if self.csv:
                for row in csv.DictReader(handle):
                    yield {k: v for k, v in row.items() if v not in ("", None)}
                return
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{self.path}:{number}: not a JSON line; is this the output of another "
                                     "program? Give a new output file.") from None

    @contextmanager
    def open(self) -> Iterator[JournalWriter]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            writer = JournalWriter(handle, self.csv, write_header=new)
            yield writer
            writer.sync()


class JournalWriter:
    def __init__(self, handle: TextIO, as_csv: bool, write_header: bool):
        self.handle = handle
        self.csv = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore") if as_csv else None
        if self.csv is not None and write_header:
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow(record)
        else:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()  # in the kernel's hands now: a killed process loses nothing written

    def sync(self) -> None:
        os.fsync(self.handle.fileno())  # and on disk, once per batch


_COCO_NAME = re.compile(r"(?:COCO_[A-Za-z]+\d*_)?(\d+)")  # COCO_val2014_000000391895, 000000391895


def coco_image_id(source: str, ids_by_name: dict[str, int] | None = None) -> int | str:
    """The image id of a file: from the annotations when given, else the number of a COCO-style name
    (``COCO_val2014_000000391895.jpg``, ``000000391895.jpg``), else the file's stem."""
    name = Path(source).name
    if ids_by_name is not None:
        if source in ids_by_name:
            return ids_by_name[source]
        if name in ids_by_name:
            return ids_by_name[name]
        raise ValueError(f"{source}: not an image of the annotations file; caption only its images, "
                         "or leave out --annotations")
    match = _COCO_NAME.fullmatch(Path(source).stem)
    return int(match.group(1)) if match else Path(source).stem


def coco_image_ids(files: Iterable[str], ids_by_name: dict[str, int] | None = None) -> dict[str, int | str]:
    """Every file's image id (see ``coco_image_id``); refuses, naming them, files that would share one, since
    a COCO results file would then give one image several captions and another none."""
    ids: dict[str, int | str] = {}
    owner: dict[int | str, str] = {}
    clashes: list[str] = []
    for source in files:
        image_id = ids[source] = coco_image_id(source, ids_by_name)
        if image_id in owner:
            clashes.append(f"{owner[image_id]} and {source} are both image {image_id!r}")
        else:
            owner[image_id] = source
    if clashes:
        more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise ValueError(f"a COCO results file needs one image id per file, but {len(clashes)} file(s) share "
                         f"an id: {'; '.join(clashes[:5])}{more}. Give --annotations with the images' ids, "
                         "rename the files, or write JSONL or CSV instead")
    return ids


@dataclass
class BatchSummary:
    output: Path
    total: int  # files named by the inputs
    captioned: int = 0  # captioned by this run
    already_done: int = 0  # found in the output of an earlier run and skipped
    failed_before: int = 0  # of those, recorded as bad by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), this run's
    seconds: float = 0.0  # captioning, after start-up
    startup_seconds: float = 0.0  # the Ray engine: connecting to the cluster and loading the actors' models

    @property
    def images_per_s(self) -> float:
        return (self.captioned + len(self.failed)) / self.seconds if self.seconds else 0.0

    def report(self, found: Discovered | None = None, show: int = 20) -> str:
        out = io.StringIO()
        startup = f" after {self.startup_seconds:.1f} s of start-up" if self.startup_seconds else ""
        out.write(f"{self.captioned} captioned ({self.images_per_s:.1f} images/s{startup}), "
                  f"{len(self.failed)} could not be read, {self.already_done} already in {self.output}")
        if self.failed_before:
            out.write(f" ({self.failed_before} of them recorded as bad: delete their lines to try them "
                      "again)")
        if found is not None and found.ignored:
            out.write(f"; left out {found.ignored} file{'' if found.ignored == 1 else 's'} in the folders "
                      "that are not images or videos by extension")
        out.write("\n")
        for folder, reason in (found.skipped_folders if found is not None else [])[:show]:
            out.write(f"  folder not searched: {folder}: {reason}\n")
        for source, reason in self.failed[:show]:
            out.write(f"  bad file: {source}: {reason}\n")
        if len(self.failed) > show:
            out.write(f"  ... and {len(self.failed) - show} more (every one is in the output with its "
                      "reason)\n")
        return out.getvalue()


@dataclass(frozen=True)
class BatchJob:
    """What both engines caption and how they write it, checked before a model is loaded or a file read:
    the files, the output and its format, each file's COCO image id (COCO results only) and the decoding
    settings asked for (the model's defaults for the rest)."""

    files: tuple[str, ...]
    output: Path
    fmt: str
    image_ids: dict[str, int | str]
    decoding: dict[str, Any]

    @classmethod
    def plan(cls, files: Iterable[str], output: str | Path, *, fmt: str | None = None,
             annotations: str | Path | None = None,
             decoding: DecodingConfig | Mapping[str, Any] | None = None) -> BatchJob:
        """Refuses, before any work, an unknown format, a bad decoding value and (COCO results) files
        without an image id of their own: every file needs its own id in the annotations."""
        files, output = tuple(files), Path(output)
        fmt = output_format(output, fmt)
        if isinstance(decoding, DecodingConfig):
            decoding = {f.name: getattr(decoding, f.name) for f in DecodingConfig.public_fields()}
        decoding = {k: v for k, v in (decoding or {}).items() if v is not None}
        decoding_settings(DecodingConfig(), decoding)
        ids = (coco_image_ids(files, annotation_ids(annotations) if annotations else None) if fmt == "coco"
               else {})
        return cls(files, output, fmt, ids, decoding)

    def lock(self):
        """Held while a run writes this output (both engines): a second run refuses, naming the first."""
        return exclusive_lock(self.output.with_name(self.output.name + ".lock"), str(self.output))

    def resume(self, done: set[str], bad: set[str]) -> tuple[list[str], BatchSummary]:
        """The files still to caption, given those earlier runs recorded (``done``; ``bad``: recorded as
        unreadable), and the summary that starts with them."""
        todo = [f for f in self.files if f not in done]
        return todo, BatchSummary(output=self.output, total=len(self.files),
                                  already_done=len(self.files) - len(todo),
                                  failed_before=sum(f in bad for f in self.files))

    def journal(self) -> Journal:
        """Where runs record every file's result, and so what a rerun skips: the output itself (JSONL,
        CSV), or ``<output>.progress.jsonl`` beside a COCO results JSON. Delete a file's line to caption it
        again."""
        if self.fmt == "coco":
            return Journal(self.output.with_name(self.output.name + ".progress.jsonl"), "jsonl")
        return Journal(self.output, self.fmt)

    def write_journal(self, records: Iterable[dict[str, Any]]) -> None:
        """The journal replaced whole, at once, by ``records`` (``CaptionResult.to_dict``); then, for COCO
        results, the JSON from it."""
        journal = self.journal()

        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                writer = JournalWriter(handle, journal.csv, write_header=True)
                for record in records:
                    writer.write(record)

        atomic_write(journal.path, write)
        if self.fmt == "coco":
            self.write_coco(journal.records())

    def write_coco(self, records: Iterable[dict[str, Any]]) -> None:
        """The COCO results JSON of this job's captioned files among ``records``."""
        atomic_write_json(self.output, [{"image_id": self.image_ids[r["source"]], "caption": r["caption"]}
                                        for r in records
                                        if "caption" in r and r.get("source") in self.image_ids])


def caption_files(
    captioner: Captioner,
    files: Iterable[str],
    output: str | Path,
    *,
    fmt: str | None = None,
    annotations: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    decoding: DecodingConfig | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Caption ``files`` into ``output``, skipping those it already holds; see the module docstring.
    ``decoding``: the settings to use (a mapping: those given, the model's defaults for the rest)."""
    job = BatchJob.plan(files, output, fmt=fmt, annotations=annotations, decoding=decoding)
    with job.lock():
        return _caption_job(captioner, job, batch_size, num_workers, progress)


def _caption_job(captioner: Captioner, job: BatchJob, batch_size: int, num_workers: int | None,
                 progress: bool) -> BatchSummary:
    settings = captioner.resolve_decoding(job.decoding)
    journal = job.journal()

    todo, summary = job.resume(*recorded(journal.records()))  # one pass over what earlier runs wrote
    started = time.perf_counter()
    results = captioner.iter_captions(todo, batch_size=batch_size, num_workers=num_workers, decoding=settings)
    bar = tqdm(total=len(todo), unit="img", disable=not progress or not todo, dynamic_ncols=True)
    with journal.open() as writer, bar:
        for count, result in enumerate(results, 1):
            writer.write(result.to_dict())
            if result.ok:
                summary.captioned += 1
            else:
                summary.failed.append((result.source, result.error))
                bar.set_postfix(bad=len(summary.failed), refresh=False)
            if count % batch_size == 0:
                writer.sync()
            bar.update()
    summary.seconds = time.perf_counter() - started
    if job.fmt == "coco":
        job.write_coco(journal.records())
    return summary


def recorded(records: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The files ``records`` (``CaptionResult.to_dict``) hold, and those of them recorded as bad."""
    done, bad = set(), set()
    for record in records:
        if "source" in record:
            done.add(record["source"])
            if "error" in record:
                bad.add(record["source"])
    return done, bad


def annotation_ids(path: str | Path) -> dict[str, int]:
    """Each image's id in a COCO caption JSON, by file name."""
    from caption.data.coco import load_coco_json

    return {image["file_name"]: int(image["id"]) for image in load_coco_json(path)["images"]}
