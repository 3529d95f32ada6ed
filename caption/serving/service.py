"""The captioning service behind the server: one model, one request batcher, for every surface.

Requests come from the Gradio page (and gradio_client), through ``caption``, and from the HTTP API, through
``caption_upload``. Each is judged on its own: its settings go through the one validator
(``caption.settings``) and its file through the one loader (``caption.data.images``), in the request's own
thread, and a bad value or file is answered with ``{"error", "error_kind"}`` naming it. Only requests that
passed go on to the batcher, which captions the requests that arrive together, from either surface, in one
forward pass, one batch at a time (``MicroBatcher``), so several users cost about what one does and no
request can fail another's batch. Work the server could not hold is refused (``ServerBusy``), never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, MutableSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from PIL import Image

from caption.api import Captioner, CaptionResult
from caption.config import DecodingConfig
from caption.data.images import load_image
from caption.data.video import Frames, is_video, read_frames
from caption.errors import ErrorKind, ImageLoadError, ParameterError, ServerBusy
from caption.models.registry import DECODERS
from caption.serving.batcher import MicroBatcher
from caption.serving.metrics import ServingMetrics
from caption.serving.uploads import UploadJanitor

logger = logging.getLogger("caption.service")


@dataclass
class Limits:
    max_file_mb: float = 50.0  # uploads over this are refused by the server before they reach the model
    max_pixels: int = 40_000_000  # larger images are refused unread (decompression bombs)
    max_video_seconds: float = 300.0
    max_beam_size: int = 10
    max_length: int = 100  # most words a request may ask for
    max_batch_size: int = 16  # concurrent requests captioned in one forward pass
    queue_size: int = 64  # HTTP API requests in flight beyond this are refused (Gradio's queue: the same)
    keep_uploads_seconds: float = 120.0  # an upload no request has used for this long is deleted
    uploads_budget_mb: float = 1024.0  # uploads beyond this are refused until answered requests free space


@dataclass
class Job:
    """One checked request on its way to the batcher: a decoded photo or a video's sampled frames."""

    name: str  # the file as the user named it
    decoding: DecodingConfig  # checked; requests with equal settings are captioned together
    surface: str  # where it came from: "gradio" or "http"
    image: Image.Image | None = None
    frames: Frames | None = None


class CaptionService:
    """The loaded model behind the server: checks requests and captions them in shared batches."""

    def __init__(self, captioner: Captioner, limits: Limits | None = None):
        self.captioner = captioner
        self.limits = limits or Limits()
        if self.limits.uploads_budget_mb < self.limits.max_file_mb:
            raise ValueError(f"the uploads budget ({self.limits.uploads_budget_mb:g} MB) must hold at least "
                             f"one upload of the largest size accepted ({self.limits.max_file_mb:g} MB)")
        self.defaults = captioner.resolve_decoding()
        self.decoding_limits = {"beam_size": self.limits.max_beam_size, "max_length": self.limits.max_length}
        # The page's controls and the APIs' settings after the file: every public decoding setting.
        self.setting_names = [f.name for f in DecodingConfig.public_fields()]
        self.decoder_name = DECODERS[captioner.model.decoder_cfg.type].title  # how the page names it
        self.batcher: MicroBatcher[Job, dict[str, Any]] = MicroBatcher(self.caption_jobs,
                                                                       self.limits.max_batch_size)
        self.metrics = ServingMetrics()
        self.janitor: UploadJanitor | None = None  # set by watch_uploads, once the page's upload set exists
        self.in_flight: Counter[str] = Counter()  # by surface
        self._counting = threading.Lock()  # the page's requests count from many threads
        self._batch_seconds = 1.0  # a running mean, for telling refused requests when to come back
        # Files are read in the requests' own threads, but only as many at once as there are cores: more only
        # compete for the GIL with the server's event loop, which then answers uploads late.
        self._reading = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))

    def watch_uploads(self, uploads: MutableSet[str],
                      outputs: Iterable[MutableSet[str]] = ()) -> UploadJanitor:
        """Keep ``uploads`` (the page's live set of uploaded paths) within budget (``UploadJanitor``)."""
        self.janitor = UploadJanitor(uploads, self.limits.keep_uploads_seconds,
                                     int(self.limits.uploads_budget_mb * 2**20), outputs=outputs,
                                     retry_after=self.retry_after)
        self.metrics.track(self.batcher.pending, lambda: self.janitor.held_bytes, self.janitor.max_bytes)
        return self.janitor

    def caption(self, upload: Any, *values: Any, **settings: Any) -> dict[str, Any]:
        """The page's ``/caption`` event: one request, judged on its own. ``upload`` is Gradio's file payload
        (a dict with ``path`` and ``orig_name``) or a path; then the decoding settings, in ``setting_names``
        order or by name (None: the model's default). Returns the caption JSON, ``{"error"}`` naming what was
        wrong with this request, or ``{}`` for a cleared upload. Never raises."""
        if upload is None or upload == "":
            return {}  # the upload was cleared: nothing to show, nothing to complain about
        started, name = time.perf_counter(), "the file"
        with self.counted("gradio"):
            try:
                path, name = _upload_path(upload)
                with self.holding(path):
                    settings = {**dict(zip(self.setting_names, values)), **settings}
                    answer = self.batcher(self.prepare(path, name, settings, "gradio"))
            except Exception as err:  # noqa: BLE001 - every failure is this request's answer
                answer = self.failure(err, name)
        self.metrics.answered("gradio", answer, time.perf_counter() - started)
        return answer

    async def caption_upload(self, path: str, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The HTTP API's request, judged as ``caption`` judges the page's: a file the API wrote to ``path``,
        named ``name`` by its sender. The file is read in a worker thread; the event loop awaits the batch
        without holding a thread. Never raises."""
        try:
            job = await anyio.to_thread.run_sync(self.prepare, path, name, settings, "http")
            return await asyncio.wrap_future(self.batcher.submit(job))
        except Exception as err:  # noqa: BLE001 - every failure is this request's answer
            return self.failure(err, name)

    def prepare(self, path: str, name: str, settings: dict[str, Any], surface: str) -> Job:
        """Check a request's decoding settings and read its file, in the request's own thread; raises
        ``ParameterError`` or ``ImageLoadError`` (named as the user named the file)."""
        decoding = self.captioner.resolve_decoding(settings, limits=self.decoding_limits)
        try:
            with self._reading:
                self._check_size(path)
                if is_video(name) or is_video(path):
                    frames = read_frames(path, self.captioner.num_frames,
                                         max_seconds=self.limits.max_video_seconds)
                    return Job(name, decoding, surface, frames=frames)
                # Decoded as Captioner.caption(path) would: the same pixels, so the same caption.
                image = self.open_image(path, self.captioner.transform.image_size)
                return Job(name, decoding, surface, image=image)
        except ImageLoadError as err:  # name the file as the user knows it, not by its temporary path
            if err.kind == ErrorKind.MISSING:  # the page asks again for an upload the janitor has deleted
                why = self.janitor.why_gone(path) if self.janitor is not None else None
                raise ImageLoadError(name, f"no longer on the server ({why or 'it was deleted'}): upload it "
                                           "again", ErrorKind.MISSING) from None
            raise err.renamed(name) from None

    def open_image(self, path: str, size: int) -> Image.Image:
        """The upright photo, decoded to about ``size`` px."""
        return load_image(path, draft_size=size, max_pixels=self.limits.max_pixels)

    def caption_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """The batcher's function: photos with the same settings in one forward pass, each video on its
        own."""
        started = time.perf_counter()
        results: list[dict[str, Any]] = [{} for _ in jobs]
        groups: dict[DecodingConfig, list[int]] = defaultdict(list)
        passes = 0
        for i, job in enumerate(jobs):
            if job.frames is None:
                groups[job.decoding].append(i)
                continue
            features = self.captioner.encode_frames(job.frames)  # (1, F*N, C)
            [result] = self.captioner.caption_features(features, sources=[job.name], decoding=job.decoding)
            result.times = job.frames.times
            results[i] = self._to_json(result)
            passes += 1
        for decoding, members in groups.items():  # usually one group: the same settings
            captions = self.captioner.caption(
                [jobs[i].image for i in members], decoding=decoding, batch_size=len(members), num_workers=0,
                skip_errors=True,
            )
            for i, result in zip(members, captions):
                result.source = jobs[i].name
                results[i] = self._to_json(result)
            passes += 1
        seconds = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        surfaces = [job.surface for job in jobs]
        self.metrics.batched(surfaces, seconds)
        mix = ", ".join(f"{surface} {count}" for surface, count in sorted(Counter(surfaces).items()))
        logger.info("captioned %d request(s) in %d forward pass(es), %.2f s (%s)", len(jobs), passes,
                    seconds, mix)
        return results

    def retry_after(self) -> int:
        """Whole seconds until the requests waiting now are about answered: when to try a refused one
        again."""
        batches = self.batcher.pending() // self.limits.max_batch_size + 1
        return max(1, min(60, math.ceil(batches * self._batch_seconds)))

    def admit(self, surface: str) -> None:
        """Raise ``ServerBusy`` when ``surface`` already has a full queue of requests in flight."""
        if self.in_flight[surface] >= self.limits.queue_size:
            raise ServerBusy(f"{self.in_flight[surface]} requests are in flight, its queue's limit",
                             self.retry_after())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, state): the model serves (its batch thread is alive), and new requests and uploads have
        room."""
        upload_room = (self.janitor.max_bytes - self.janitor.held_bytes if self.janitor is not None
                       else math.inf)
        state = {
            "model": self.captioner.path.name,
            "serving": self.batcher.alive(),
            "queue_depth": self.batcher.pending(),
            "in_flight": dict(self.in_flight),
            "queue_size": self.limits.queue_size,
            "upload_bytes": self.janitor.held_bytes if self.janitor is not None else 0,
            "upload_budget_bytes": self.janitor.max_bytes if self.janitor is not None else None,
        }
        ready = (state["serving"] and max(self.in_flight.values(), default=0) < self.limits.queue_size
                 and upload_room >= self.limits.max_file_mb * 2**20)
        return ready, state

    @contextlib.contextmanager
    def counted(self, surface: str):
        """Count a request of ``surface`` in flight for the length of the block."""
        with self._counting:
            self.in_flight[surface] += 1
        self.metrics.in_flight.labels(surface).inc()
        try:
            yield
        finally:
            with self._counting:
                self.in_flight[surface] -= 1
            self.metrics.in_flight.labels(surface).dec()

    @staticmethod
    def failure(err: Exception, name: str) -> dict[str, Any]:
        """The answer for a request that raised ``err``: its own words for what the user can fix, a server
        error (logged) for anything else."""
        if isinstance(err, (ImageLoadError, ParameterError, ServerBusy)):
            return error_answer(str(err), err.kind)
        logger.exception("captioning %s failed", name)  # out of memory, say: one request fails
        return error_answer(f"{name}: the server could not caption this file now ({err}); try again later",
                            ErrorKind.SERVER)

    def _check_size(self, path: str) -> None:
        file_bytes = Path(path).stat().st_size if Path(path).is_file() else 0
        if file_bytes > self.limits.max_file_mb * 2**20:
            raise ImageLoadError(path, f"{file_bytes / 2**20:.1f} MB is over the "
                                       f"{self.limits.max_file_mb:g} MB limit", ErrorKind.TOO_LARGE)

    @staticmethod
    def _to_json(result: CaptionResult) -> dict[str, Any]:
        if not result.ok:
            return error_answer(f"{result.source}: {result.error}", result.error_kind)
        return result.to_dict(attention=True)

    def holding(self, path: str | None):
        """While a request reads its upload, the janitor leaves it alone."""
        return self.janitor.using(path) if self.janitor is not None else contextlib.nullcontext()


def error_answer(message: str, kind: ErrorKind | str | None) -> dict[str, Any]:
    return {"error": message, "error_kind": ErrorKind(kind).value if kind else None}


def _upload_path(upload: Any) -> tuple[str, str]:
    """(path on the server, the name the user gave it) from Gradio's file payload or a plain path."""
    if isinstance(upload, (str, Path)):
        return str(upload), Path(upload).name
    if isinstance(upload, dict) and isinstance(upload.get("path"), str):
        return upload["path"], str(upload.get("orig_name") or Path(upload["path"]).name)
    raise ParameterError("file", upload, "send an uploaded file (gradio_client: handle_file(path))")
