"""``caption batch --engine ray``: the batch captioner on Ray Data, for more cores, GPUs or machines.

What the output's journal (see ``BatchJob.journal``) does not hold yet is cut into blocks of ``block_size``
files in input order. Each block is one row of a Ray dataset; ``map_batches`` hands rows to a pool of
actors, each holding one Captioner (loaded once per actor), which read and decode the block's images
themselves (the same loader and per-file error reports as the local engine) and write the block's results
to ``<output>.blocks/<block>.jsonl`` atomically before returning. A rerun counts every record in that
folder as done: a killed driver loses the blocks in flight; a killed actor is restarted by Ray and its block
retried (Ray Data's default ``max_restarts=-1``, ``max_task_retries=-1``), and a retried block replaces its
file whole, so no file is captioned into the output twice. When every block is done the journal is
rewritten atomically with the new records after the old ones (and, for COCO results, the JSON from it),
and the blocks folder is removed: as with the local engine, deleting a file's line from the journal makes
the next run caption that file again.

Failures are the local engine's: the model is loaded here once before any actor starts, so a bad model gets
the same message and exit status; an unreachable ``--address`` is found by a plain connection first; and
actors that cannot be placed (no GPU, too few CPUs) end the run after ``startup_timeout`` seconds, naming
what the cluster has. Any other Ray failure is reported as an ``EngineError`` with its cause's last line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from caption.config import DecodingConfig
from caption.errors import EngineError
from caption.serving.batch import BatchJob, BatchSummary, recorded
from caption.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs Ray Data: pip install 'caption[ray]' (or pip install 'ray[data]')"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class Block:
    index: int
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        digest = hashlib.sha256("\n".join(self.files).encode()).hexdigest()[:12]
        return f"block-{self.index:06d}-{digest}.jsonl"


def plan_blocks(files: list[str], block_size: int) -> list[Block]:
    if block_size < 1:
        raise ValueError(f"block size {block_size} is not allowed: choose a whole number, 1 or more")
    return [Block(i, tuple(files[start:start + block_size]))
            for i, start in enumerate(range(0, len(files), block_size))]


def read_block(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class BlockCaptioner:
    """A Ray Data actor: one Captioner, captioning a block per call and writing its results file."""

    def __init__(self, model: str, device: str, precision: str, decoding: dict[str, Any], blocks_dir: str,
                 batch_size: int, num_workers: int | None, cwd: str, threads: int):
        import torch

        from caption.api import Captioner

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, not the machine's
        # Relative inputs are relative to where the command ran; on another node that folder must exist
        # too (a shared file system mounted at the same path), else give absolute paths.
        if Path(cwd).is_dir():
            os.chdir(cwd)
        self.captioner = Captioner.load(model, device=device, precision=precision)
        # the model's defaults for what is not given
        self.decoding = self.captioner.resolve_decoding(decoding)
        self.blocks_dir = Path(blocks_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.ready_at = time.time()  # reported with this actor's first block: when captioning could begin

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"name": [], "captioned": [], "failed": [], "ready_at": []}
        for name, files in zip(rows["name"], rows["files"]):
            records = [result.to_dict() for result in self.captioner.iter_captions(
                json.loads(files), decoding=self.decoding, batch_size=self.batch_size,
                num_workers=self.num_workers)]
            atomic_write_text(self.blocks_dir / name,
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            out["name"].append(name)
            out["captioned"].append(sum("error" not in r for r in records))
            out["failed"].append(json.dumps([[r["source"], r["error"]] for r in records if "error" in r]))
            out["ready_at"].append(self.ready_at)
            self.ready_at = 0.0
        return out


def caption_files_ray(
    model: str,
    files: list[str],
    output: str | Path,
    *,
    fmt: str | None = None,
    annotations: str | Path | None = None,
    decoding: DecodingConfig | dict[str, Any] | None = None,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    block_size: int = 256,
    batch_size: int = 32,
    num_workers: int | None = None,
    startup_timeout: float = 300.0,
    precision: str = "auto",
    progress: bool = True,
) -> BatchSummary:
    """Caption ``files`` into ``output`` on a Ray cluster (``address``: ``auto``, ``HOST:PORT``, or None for a
    local one started here) with the model directory ``model``; ``decoding``: the settings to use (a
    mapping: those given, the model's defaults for the rest); ``startup_timeout``: seconds to wait for every
    actor to be placed and to load its model; ``precision``: as ``Captioner.load``'s. See the module
    docstring."""
    ray = import_ray()
    # Checked here, not in every actor: a bad value or a missing image id fails before Ray starts.
    job = BatchJob.plan(files, output, fmt=fmt, annotations=annotations, decoding=decoding)
    if actors < 1:
        raise ValueError(f"--actors {actors} is not allowed: choose a whole number, 1 or more")
    if startup_timeout <= 0:
        raise ValueError(f"--startup-timeout {startup_timeout} is not allowed: choose seconds, more than 0")
    check_model(model, precision)
    if address not in (None, "auto", "local"):
        check_address(address)
    with job.lock():
        return _run_blocks(ray, job, model, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                           cpus_per_actor=cpus_per_actor, block_size=block_size, batch_size=batch_size,
                           num_workers=num_workers, startup_timeout=startup_timeout, precision=precision,
                           progress=progress)


def check_model(model: str, precision: str = "auto") -> None:
    """Load the model once here, on the CPU, so that a bad one fails as the local engine fails (the same
    message, exit status 2) instead of as a dead actor."""
    from caption.api import Captioner

    Captioner.load(model, device="cpu", precision=precision)


def check_address(address: str, timeout: float = 10.0) -> None:
    """Refuse an address nothing answers at, which ``ray.init`` would retry without end."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err.strerror or err}): start one there "
                              "with `ray start --head`, give the address `ray status` prints, or leave out "
                              "--address to start a local one") from None


_CAUSE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def engine_error(err: Exception, startup_timeout: float, needs: str, has: str) -> EngineError:
    """A Ray failure in one line: the cause an actor raised (the last ``SomeError: ...`` line of the
    traceback Ray forwards), or, for actors that could not be placed, what they ask for and what there is."""
    text = str(err)
    if "Timed out while starting actors" in text:
        return EngineError(f"the Ray actors did not start within {startup_timeout:g} s: each asks for "
                           f"{needs}, and the cluster has {has}. Ask for less (--cpus-per-actor, "
                           "--gpus-per-actor, --actors), add nodes, or wait longer (--startup-timeout)")
    causes = [m for line in text.splitlines() if (m := _CAUSE.match(line.strip()))]
    reason = f"{causes[-1].group(1)}: {causes[-1].group(2)}" if causes else text.strip().splitlines()[0]
    return EngineError(f"the Ray engine failed: {reason}")


def _earlier_results(job: BatchJob, blocks_dir: Path) -> tuple[set[str], set[str], set[str]]:
    """The files the journal holds; those it or a killed run's blocks hold (done); those recorded as bad."""
    in_journal, bad = recorded(job.journal().records())
    in_blocks, bad_in_blocks = recorded(  # one block in memory at a time
        record for path in blocks_dir.glob("block-*.jsonl") for record in read_block(path))
    return in_journal, in_journal | in_blocks, bad | bad_in_blocks


def _run_blocks(ray, job: BatchJob, model: str, *, address: str | None, actors: int, gpus_per_actor: float,
                cpus_per_actor: float, block_size: int, batch_size: int, num_workers: int | None,
                startup_timeout: float, precision: str, progress: bool) -> BatchSummary:
    """What the journal and the blocks folder do not hold through the actor pool, then the journal."""
    output = job.output
    blocks_dir = output.with_name(output.name + ".blocks")
    blocks_dir.mkdir(parents=True, exist_ok=True)
    for stale in blocks_dir.glob(".*.tmp"):  # a writer killed mid-write; its block is redone
        stale.unlink(missing_ok=True)
    in_journal, done, bad = _earlier_results(job, blocks_dir)
    todo, summary = job.resume(done, bad)
    blocks = plan_blocks(todo, block_size)

    started, wall_start = time.perf_counter(), time.time()
    if blocks:
        ours = not ray.is_initialized()  # a caller's own ray.init() is left as it is
        if ours:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        try:
            summary.startup_seconds = _caption_blocks(
                ray, job, blocks, blocks_dir, summary, model=model, actors=actors,
                gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, batch_size=batch_size,
                num_workers=num_workers, startup_timeout=startup_timeout, precision=precision,
                progress=progress, wall_start=wall_start)
        finally:
            if ours:
                ray.shutdown()
    summary.seconds = time.perf_counter() - started - summary.startup_seconds
    # The journal rewritten at once: what it held, then the new records in input order. Records stream
    # through block by block, so memory holds one block, not the archive.
    job.write_journal(_merged(job, in_journal, list(blocks_dir.glob("block-*.jsonl"))))
    shutil.rmtree(blocks_dir, ignore_errors=True)
    return summary


def _merged(job: BatchJob, in_journal: set[str], blocks: list[Path]) -> Iterator[dict[str, Any]]:
    """The journal's records, then the blocks' in input order (a block holds consecutive files; this run's
    and a killed run's blocks are ordered by their first file)."""
    yield from job.journal().records()
    position = {source: i for i, source in enumerate(job.files)}

    def first_file(path: Path) -> int:
        with open(path, encoding="utf-8") as handle:
            return position.get(json.loads(handle.readline() or "{}").get("source"), len(position))

    for path in sorted(blocks, key=first_file):
        yield from (r for r in read_block(path) if r["source"] not in in_journal)


def _caption_blocks(ray, job: BatchJob, blocks: list[Block], blocks_dir: Path, summary: BatchSummary, *,
                    model: str, actors: int, gpus_per_actor: float, cpus_per_actor: float, batch_size: int,
                    num_workers: int | None, startup_timeout: float, precision: str, progress: bool,
                    wall_start: float) -> float:
    """Every block through the actor pool, counted into ``summary``; returns the start-up seconds (the
    actors' processes and models, until the first actor is ready to caption)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)  # its traceback: we say it in a line
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts files, not blocks
    context.wait_for_min_actors_s = max(1, round(startup_timeout))  # else Ray waits for ever
    needs = f"{cpus_per_actor:g} CPU" + (f" and {gpus_per_actor:g} GPU" if gpus_per_actor else "")
    resources = ray.cluster_resources()
    has = f"{resources.get('CPU', 0):g} CPU and {resources.get('GPU', 0):g} GPU"
    if resources.get("CPU", 0) < cpus_per_actor * actors or resources.get("GPU", 0) < gpus_per_actor * actors:
        logger.warning("%d actor(s) of %s each do not fit the cluster's %s now: waiting up to %g s for nodes "
                       "(--startup-timeout)", actors, needs, has, startup_timeout)
    rows = [{"name": b.name, "files": json.dumps(list(b.files))} for b in blocks]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        BlockCaptioner, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor, fn_constructor_kwargs={
            "model": str(model), "device": "cuda" if gpus_per_actor else "cpu", "precision": precision,
            "decoding": job.decoding,
            "blocks_dir": str(blocks_dir.resolve()), "batch_size": batch_size, "num_workers": num_workers,
            "cwd": os.getcwd(), "threads": max(1, int(cpus_per_actor))})
    sizes = {b.name: len(b.files) for b in blocks}
    ready: list[float] = []
    bar = tqdm(total=sum(sizes.values()), unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with bar:
            for row in dataset.iter_rows():
                summary.captioned += int(row["captioned"])
                summary.failed.extend(tuple(pair) for pair in json.loads(row["failed"]))
                if row["ready_at"]:
                    ready.append(float(row["ready_at"]))
                bar.update(sizes[row["name"]])
    except ray.exceptions.RayError as err:
        raise engine_error(err, startup_timeout, needs, has) from None
    return max(0.0, min(ready, default=wall_start) - wall_start)
