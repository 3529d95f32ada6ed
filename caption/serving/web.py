"""The Gradio web demo: upload a photo or a video, get its caption, the top beams, and where it looked.

One event, ``/caption``, does the work for the page and for ``gradio_client`` alike. Each request is judged on
its own (``CaptionService.caption``): its settings go through the one validator (``caption.settings``) and its
file through the one loader (``caption.data.images``), in the request's own thread, and a bad value or file is
answered with ``{"error": ...}`` naming it. Only requests that passed go on to the batcher, which captions the
requests that arrive together in one forward pass, one batch at a time (``MicroBatcher``), so several users
cost about what one does and no request can fail another's batch. Gradio's own input checks are off for this
event (``preprocess=False``): they run on a whole batch at once and would fail all of it for one bad value.
A second, private step draws the page from the JSON. Uploads are deleted when unused (``UploadJanitor``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from caption.api import Captioner, CaptionResult
from caption.config import DecodingConfig, setting_label
from caption.data.images import load_image
from caption.data.video import Frames, is_video, read_frames
from caption.errors import ErrorKind, ImageLoadError, ParameterError
from caption.models.registry import DECODERS
from caption.serving.batcher import MicroBatcher
from caption.serving.heatmaps import video_word_heatmaps, word_heatmaps
from caption.serving.uploads import UploadJanitor

logger = logging.getLogger("caption.web")

PREVIEW_SIZE = 768  # the page's copy of a photo: JPEGs decode straight to about this size (draft mode)


@dataclass
class Limits:
    max_file_mb: float = 50.0  # uploads over this are refused by the server before they reach the model
    max_pixels: int = 40_000_000  # larger images are refused unread (decompression bombs)
    max_video_seconds: float = 300.0
    max_beam_size: int = 10
    max_length: int = 100  # most words a request may ask for
    max_batch_size: int = 16  # concurrent requests captioned in one forward pass
    keep_uploads_seconds: float = 120.0  # an upload no request has used for this long is deleted
    uploads_budget_mb: float = 1024.0  # beyond this, the least recently used uploads are deleted first


@dataclass
class Job:
    """One checked request on its way to the batcher: a decoded photo or a video's sampled frames."""

    name: str  # the file as the user named it
    decoding: DecodingConfig  # checked; requests with equal settings are captioned together
    image: Image.Image | None = None
    frames: Frames | None = None


class CaptionService:
    """The loaded model behind the demo: the ``/caption`` function and the page renderer."""

    def __init__(self, captioner: Captioner, limits: Limits | None = None):
        self.captioner = captioner
        self.limits = limits or Limits()
        self.defaults = captioner.resolve_decoding()
        self.decoding_limits = {"beam_size": self.limits.max_beam_size, "max_length": self.limits.max_length}
        # The page's controls and the /caption API's settings after the file: every public decoding setting.
        self.setting_names = [f.name for f in DecodingConfig.public_fields()]
        self.decoder_name = DECODERS[captioner.model.decoder_cfg.type].title  # how the page names it
        self.batcher: MicroBatcher[Job, dict[str, Any]] = MicroBatcher(self.caption_jobs,
                                                                       self.limits.max_batch_size)
        self.janitor: UploadJanitor | None = None  # set by build_app, which knows where Gradio keeps uploads
        # Files are read in the requests' own threads, but only as many at once as there are cores: more only
        # compete for the GIL with the server's event loop, which then answers uploads late.
        self._reading = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))

    def caption(self, upload: Any, *values: Any, **settings: Any) -> dict[str, Any]:
        """The ``/caption`` event: one request, judged on its own. ``upload`` is Gradio's file payload (a dict
        with ``path`` and ``orig_name``) or a path; then the decoding settings, in ``setting_names`` order or
        by name (None: the model's default). Returns the caption JSON, ``{"error"}`` naming what was wrong
        with this request, or ``{}`` for a cleared upload. Never raises."""
        if upload is None or upload == "":
            return {}  # the upload was cleared: nothing to show, nothing to complain about
        try:
            path, name = _upload_path(upload)
        except ParameterError as err:
            return _error(str(err), err.kind)
        with self._holding(path):
            try:
                settings = {**dict(zip(self.setting_names, values)), **settings}
                return self.batcher(self.prepare(path, name, settings))
            except (ImageLoadError, ParameterError) as err:
                return _error(str(err), err.kind)
            except Exception as err:  # noqa: BLE001 - out of memory, say: this request fails, the server goes on
                logger.exception("captioning %s failed", name)
                return _error(f"{name}: the server could not caption this file now ({err}); try again later",
                              ErrorKind.SERVER)

    def prepare(self, path: str, name: str, settings: dict[str, Any]) -> Job:
        """Check a request's decoding settings and read its file, in the request's own thread; raises
        ``ParameterError`` or ``ImageLoadError`` (named as the user named the file)."""
        decoding = self.captioner.resolve_decoding(settings, limits=self.decoding_limits)
        try:
            with self._reading:
                self._check_size(path)
                if is_video(name) or is_video(path):
                    frames = read_frames(path, self.captioner.num_frames,
                                         max_seconds=self.limits.max_video_seconds)
                    return Job(name, decoding, frames=frames)
                # Decoded as Captioner.caption(path) would: the same pixels, so the same caption.
                return Job(name, decoding, image=self.open_image(path, self.captioner.transform.image_size))
        except ImageLoadError as err:  # name the file as the user knows it, not by its temporary path
            if err.kind == ErrorKind.MISSING:  # the page asks again for an upload the janitor has deleted
                raise ImageLoadError(name, "no longer on the server (uploads are deleted after "
                                           f"{self.limits.keep_uploads_seconds:g} s unused): upload it again",
                                     ErrorKind.MISSING) from None
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
        logger.info("captioned %d request(s) in %d forward pass(es), %.2f s", len(jobs), passes,
                    time.perf_counter() - started)
        return results

    def _check_size(self, path: str) -> None:
        file_bytes = Path(path).stat().st_size if Path(path).is_file() else 0
        if file_bytes > self.limits.max_file_mb * 2**20:
            raise ImageLoadError(path, f"{file_bytes / 2**20:.1f} MB is over the "
                                       f"{self.limits.max_file_mb:g} MB limit", ErrorKind.TOO_LARGE)

    @staticmethod
    def _to_json(result: CaptionResult) -> dict[str, Any]:
        if not result.ok:
            return _error(f"{result.source}: {result.error}", result.error_kind)
        return result.to_dict(attention=True)

    def render(self, path: str | None, result: dict | None):
        """The page from ``/caption``'s JSON: status, caption, upright image (a video's most attended frame),
        beams, one heatmap per word, and a video's sampled frames."""
        if not result:
            return "", "", None, [], [], []
        if "error" in result:
            return f"**Could not caption this file.** {result['error']}", "", None, [], [], []
        beams = [[beam["text"], beam["score"]] for beam in result["beams"]]
        attention, grid = np.array(result["attention"]), tuple(result["grid"])
        try:
            with self._holding(path):
                if "frame_times" in result:
                    times = result["frame_times"]
                    frames = read_frames(path, len(times), max_side=PREVIEW_SIZE,
                                         max_seconds=self.limits.max_video_seconds).images
                    by_word, by_frame = video_word_heatmaps(frames, times, result["words"], attention, grid)
                    shares = attention.reshape(len(result["words"]), len(times), -1).sum(axis=(0, 2))  # (F,)
                    return "", result["caption"], frames[int(shares.argmax())], beams, by_word, by_frame
                image = self.open_image(path, PREVIEW_SIZE)
        except ImageLoadError as err:  # the upload is gone (cleared, or cleaned up meanwhile)
            return (f"**Could not show this file.** {err.renamed(Path(path).name)}", result["caption"], None,
                    beams, [], [])
        return "", result["caption"], image, beams, word_heatmaps(image, result["words"], attention, grid), []

    def _holding(self, path: str | None):
        """While a request reads its upload, the janitor leaves it alone."""
        return self.janitor.using(path) if self.janitor is not None else contextlib.nullcontext()


def _error(message: str, kind: ErrorKind | str | None) -> dict[str, Any]:
    return {"error": message, "error_kind": ErrorKind(kind).value if kind else None}


def _upload_path(upload: Any) -> tuple[str, str]:
    """(path on the server, the name the user gave it) from Gradio's file payload or a plain path."""
    if isinstance(upload, (str, Path)):
        return str(upload), Path(upload).name
    if isinstance(upload, dict) and isinstance(upload.get("path"), str):
        return upload["path"], str(upload.get("orig_name") or Path(upload["path"]).name)
    raise ParameterError("file", upload, "send an uploaded file (gradio_client: handle_file(path))")


def _setting_control(f: dataclasses.Field, defaults: DecodingConfig,
                     limits: dict[str, float]) -> gr.Slider | gr.Number:
    """The page's control for a decoding setting, at the model's default: a slider over its field's range
    (a high of None: the server's limit), or a number box for a setting that declares no slider."""
    label, elem_id, value = setting_label(f).capitalize(), f.name.replace("_", "-"), getattr(defaults, f.name)
    if f.metadata["slider"] is None:
        return gr.Number(value, label=label, elem_id=elem_id, precision=0 if f.metadata["whole"] else None)
    low, high, step = f.metadata["slider"]
    high = limits[f.name] if high is None else high
    return gr.Slider(low, high, value=min(max(value, low), high), step=step, label=label, elem_id=elem_id)


def _caption_endpoint(service: CaptionService):
    """``service.caption`` with a signature naming each setting, so that Gradio's API (and gradio_client's
    keyword arguments) call them by name: ``predict(handle_file(p), beam_size=5, api_name="/caption")``."""

    def caption(upload: Any, *values: Any) -> dict[str, Any]:
        return service.caption(upload, *values)

    parameters = [inspect.Parameter("upload", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                   for name in service.setting_names]
    caption.__signature__ = inspect.Signature(parameters)
    return caption


def build_app(
    service: CaptionService, examples: list[str] | None = None, title: str = "Image captioning"
) -> gr.Blocks:
    limits, defaults = service.limits, service.defaults
    # No delete_cache: Gradio's own cleaning goes by age alone (an upload whose request is still queued would
    # go) and deleted the examples' copies too; the janitor (set below) cleans instead.
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload a photo or a video: the model writes a caption and shows where it "
                    f"looked for each word ({service.decoder_name}). A video is captioned from frames "
                    "sampled across it.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo (JPEG, PNG, WebP, ...) or video (mp4, avi, webm, mov, mkv)",
                                 type="filepath", elem_id="upload")
                settings = [_setting_control(f, defaults, service.decoding_limits)
                            for f in DecodingConfig.public_fields()]
                run = gr.Button("Caption", variant="primary", elem_id="run")
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[upload], label="Examples")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                with gr.Row():
                    preview = gr.Image(label="Your photo, upright (a video: its most attended frame)",
                                       interactive=False, height=320, elem_id="preview")
                    beams = gr.Dataframe(headers=["beam", "score"], label="Top beams", interactive=False,
                                         wrap=True, column_widths=["80%", "20%"], elem_id="beams")
                heatmaps = gr.Gallery(label="Where the model looked, word by word", columns=6, height="auto",
                                      elem_id="attention")
                frames = gr.Gallery(label="Video: the sampled frames and their share of the attention",
                                    columns=8, height="auto", elem_id="frames")
                with gr.Accordion("JSON (what /caption returns)", open=False):
                    result = gr.JSON(elem_id="json")
        # preprocess=False: the request's own checks judge its values (see the module docstring). Twice the
        # batch size may wait in the batcher, so the next batch is full when the current one ends.
        gr.on(
            [run.click, upload.change], _caption_endpoint(service), [upload, *settings], [result],
            api_name="caption", preprocess=False, concurrency_limit=2 * limits.max_batch_size,
        ).then(
            service.render, [upload, result], [status, caption, preview, beams, heatmaps, frames],
            api_visibility="private", concurrency_limit=4,
        )
    service.janitor = UploadJanitor(app.upload_file_set, limits.keep_uploads_seconds,
                                    int(limits.uploads_budget_mb * 2**20), outputs=app.temp_file_sets)
    return app
