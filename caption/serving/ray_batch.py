"""``caption batch --engine ray``: the batch captioner on Ray Data, for more cores, GPUs or machines.

The files are cut into blocks of ``block_size`` in input order. Each block is one row of a Ray dataset;
``map_batches`` hands rows to a pool of actors, each holding one Captioner (loaded once per actor), which
read and decode the block's images themselves (the same loader and per-file error reports as the local
engine) and write the block's results to ``<output>.blocks/<block>.jsonl`` atomically before returning.
A block's file name carries a hash of its file list, so a rerun of the same command skips every block on
disk and only those: a killed driver loses the blocks in flight; a killed actor is restarted by Ray and its
block retried (Ray Data's default ``max_restarts=-1``, ``max_task_retries=-1``), and a retried block
replaces its file whole, so no file is captioned into the output twice. When every block is done the
merged output (JSONL, CSV or COCO results JSON, as the local engine writes it) is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from caption.config import DecodingConfig
from caption.serving.batch import BatchJob, BatchSummary
from caption.utils.io import atomic_write_text

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

    def __init__(self, model: str, device: str, decoding: dict[str, Any], blocks_dir: str, batch_size: int,
                 num_workers: int | None, cwd: str, threads: int):
        import torch

        from caption.api import Captioner

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, not the machine's
        # Relative inputs are relative to where the command ran; on another node that folder must exist
        # too (a shared file system mounted at the same path), else give absolute paths.
        if Path(cwd).is_dir():
            os.chdir(cwd)
        self.captioner = Captioner.load(model, device=device)
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
    progress: bool = True,
) -> BatchSummary:
    """Caption ``files`` into ``output`` on a Ray cluster (``address``: ``auto``, ``HOST:PORT``, or None for a
    local one started here) with the model directory ``model``; ``decoding``: the settings to use (a
    mapping: those given, the model's defaults for the rest). See the module docstring."""
    ray = import_ray()
    # Checked here, not in every actor: a bad value or a missing image id fails before Ray starts.
    job = BatchJob.plan(files, output, fmt=fmt, annotations=annotations, decoding=decoding)
    if actors < 1:
        raise ValueError(f"--actors {actors} is not allowed: choose a whole number, 1 or more")
    with job.lock():
        return _run_blocks(ray, job, model, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                           cpus_per_actor=cpus_per_actor, block_size=block_size, batch_size=batch_size,
                           num_workers=num_workers, progress=progress)


def _run_blocks(ray, job: BatchJob, model: str, *, address: str | None, actors: int, gpus_per_actor: float,
                cpus_per_actor: float, block_size: int, batch_size: int, num_workers: int | None,
                progress: bool) -> BatchSummary:
    """The blocks of ``job`` not on disk yet through the actor pool, then the merged output."""
    output, files = job.output, list(job.files)
    blocks_dir = output.with_name(output.name + ".blocks")
    blocks_dir.mkdir(parents=True, exist_ok=True)
    for stale in blocks_dir.glob(".*.tmp"):  # a writer killed mid-write; its block is redone
        stale.unlink(missing_ok=True)
    blocks = plan_blocks(files, block_size)
    done = [b for b in blocks if (blocks_dir / b.name).is_file()]
    todo = [b for b in blocks if not (blocks_dir / b.name).is_file()]
    summary = BatchSummary(output=output, total=len(files))
    for block in done:  # one block in memory at a time
        earlier = read_block(blocks_dir / block.name)
        summary.already_done += len(earlier)
        summary.failed_before += sum("error" in r for r in earlier)

    started, wall_start = time.perf_counter(), time.time()
    if todo:
        ours = not ray.is_initialized()  # a caller's own ray.init() is left as it is
        if ours:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts files, not blocks
        rows = [{"name": b.name, "files": json.dumps(list(b.files))} for b in todo]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            BlockCaptioner, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor, fn_constructor_kwargs={
                "model": str(model), "device": "cuda" if gpus_per_actor else "cpu",
                "decoding": job.decoding,
                "blocks_dir": str(blocks_dir.resolve()), "batch_size": batch_size, "num_workers": num_workers,
                "cwd": os.getcwd(), "threads": max(1, int(cpus_per_actor))})
        sizes = {b.name: len(b.files) for b in todo}
        ready: list[float] = []
        bar = tqdm(total=sum(sizes.values()), unit="img", disable=not progress, dynamic_ncols=True)
        with bar:
            for row in dataset.iter_rows():
                summary.captioned += int(row["captioned"])
                summary.failed.extend(tuple(pair) for pair in json.loads(row["failed"]))
                if row["ready_at"]:
                    ready.append(float(row["ready_at"]))
                bar.update(sizes[row["name"]])
        if ours:
            ray.shutdown()
        # Start-up: the cluster, the actors' processes and models, until the first actor is ready to caption.
        summary.startup_seconds = max(0.0, min(ready, default=wall_start) - wall_start)
    summary.seconds = time.perf_counter() - started - summary.startup_seconds
    # The whole output, in input order, written at once as the local engine writes it. Records stream
    # through block by block, so memory holds one block, not the archive.
    job.write_output(r for b in blocks for r in read_block(blocks_dir / b.name))
    return summary
