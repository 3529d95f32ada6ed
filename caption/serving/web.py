"""The Gradio web demo: upload a photo or a video, get its caption, the top beams, and where it looked.

One event, ``/caption``, does the work for the page and for ``gradio_client`` alike. It is a Gradio batch
function: requests that arrive together are captioned in one batched forward pass, one batch at a time
(``concurrency_limit=1``), so several users cost about what one does. It returns JSON; a second, private
step draws the page from that JSON. Bad files come back as ``{"error": ...}``, shown on the page; they
never raise, so one bad upload cannot fail the other requests of its batch or take the server down.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from caption.api import Captioner
from caption.data.images import ImageLoadError, load_image
from caption.data.video import is_video, read_frames
from caption.serving.heatmaps import video_word_heatmaps, word_heatmaps

logger = logging.getLogger("caption.web")

PREVIEW_SIZE = 768  # the page's copy of a photo: JPEGs decode straight to about this size (draft mode)


@dataclass
class Limits:
    max_file_mb: float = 50.0  # uploads over this are refused by the server before they reach the model
    max_pixels: int = 40_000_000  # larger images are refused unread (decompression bombs)
    max_video_seconds: float = 300.0
    max_beam_size: int = 10
    max_batch_size: int = 16  # concurrent requests captioned in one forward pass


class CaptionService:
    """The loaded model behind the demo: the batched ``/caption`` function and the page renderer."""

    def __init__(self, captioner: Captioner, limits: Limits | None = None):
        self.captioner = captioner
        self.limits = limits or Limits()
        self.defaults = captioner.resolve_decoding()

    def open_image(self, path: str, size: int) -> Image.Image:
        """The upright photo, decoded to about ``size`` px; refused with a reason naming the upload."""
        self._check_size(path)
        try:
            return load_image(path, draft_size=size, max_pixels=self.limits.max_pixels)
        except ImageLoadError as err:  # name the file as the user knows it, not by its temporary path
            raise ImageLoadError(Path(path).name, err.reason) from None

    def caption_batch(self, paths: list[str | None], beam_sizes: list[float], max_lengths: list[float]) -> list[list[dict]]:
        """Gradio batch function: lists in (one entry per request), one list of JSON results out."""
        started = time.perf_counter()
        results: list[dict[str, Any]] = [{} for _ in paths]
        groups: dict[tuple[int, int], list[tuple[int, Image.Image]]] = defaultdict(list)
        for i, (path, beam_size, max_length) in enumerate(zip(paths, beam_sizes, max_lengths)):
            if not path:  # the upload was cleared: nothing to show
                continue
            if is_video(path):  # a video is a batch of its own frames
                results[i] = self._caption_video(path, beam_size, max_length)
                continue
            try:
                # Decoded as Captioner.caption(path) would: the same pixels, so the same caption.
                image = self.open_image(path, self.captioner.transform.image_size)
                settings = self._settings(beam_size, max_length)
            except (ImageLoadError, ValueError) as err:
                results[i] = {"error": str(err)}
                continue
            groups[settings].append((i, image))
        for (beam_size, max_length), members in groups.items():  # usually one group: the same settings
            try:
                captions = self.captioner.caption(
                    [image for _, image in members], beam_size=beam_size, max_length=max_length,
                    batch_size=len(members), num_workers=0, skip_errors=True,
                )
            except RuntimeError as err:  # out of memory, say: these requests fail with a reason, the server goes on
                logger.exception("captioning a batch of %d failed", len(members))
                for i, _ in members:
                    results[i] = {"error": f"the server could not caption this photo now ({err}); try again later"}
                continue
            for (i, _), result in zip(members, captions):
                results[i] = self._to_json(result)
        logger.info("captioned %d request(s) in %d forward pass(es), %.2f s", len(paths), len(groups),
                    time.perf_counter() - started)
        return [results]

    def _caption_video(self, path: str, beam_size: float | None, max_length: float | None) -> dict[str, Any]:
        name = Path(path).name
        try:
            self._check_size(path)
            beam, length = self._settings(beam_size, max_length)
            [result] = self.captioner.caption_video(path, max_seconds=self.limits.max_video_seconds,
                                                    beam_size=beam, max_length=length)
        except ImageLoadError as err:
            return {"error": str(ImageLoadError(name, err.reason))}
        except ValueError as err:
            return {"error": str(err)}
        return {**self._to_json(result), "frame_times": result.times}

    def _check_size(self, path: str) -> None:
        file_bytes = Path(path).stat().st_size if Path(path).is_file() else 0
        if file_bytes > self.limits.max_file_mb * 2**20:
            raise ImageLoadError(Path(path).name, f"{file_bytes / 2**20:.1f} MB is over the "
                                                  f"{self.limits.max_file_mb:g} MB limit")

    def _settings(self, beam_size: float | None, max_length: float | None) -> tuple[int, int]:
        beam = int(beam_size or self.defaults["beam_size"])
        length = int(max_length or self.defaults["max_length"])
        if not 1 <= beam <= self.limits.max_beam_size:
            raise ValueError(f"beam size {beam} is out of range: choose 1 to {self.limits.max_beam_size}")
        if not 1 <= length <= 100:
            raise ValueError(f"maximum length {length} is out of range: choose 1 to 100")
        return beam, length

    @staticmethod
    def _to_json(result) -> dict[str, Any]:
        if not result.ok:
            return {"error": str(ImageLoadError(result.source, result.error))}
        return {
            "caption": result.text,
            "score": round(result.score, 4),
            "beams": result.beams,
            "words": result.words,
            "attention": np.round(result.attention, 4).tolist(),  # (words, N) over a rows x cols grid
            "grid": list(result.grid),
        }

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
            if "frame_times" in result:
                times = result["frame_times"]
                frames = read_frames(path, len(times), max_side=PREVIEW_SIZE,
                                     max_seconds=self.limits.max_video_seconds).images
                by_word, by_frame = video_word_heatmaps(frames, times, result["words"], attention, grid)
                shares = attention.reshape(len(result["words"]), len(times), -1).sum(axis=(0, 2))  # (F,)
                return "", result["caption"], frames[int(shares.argmax())], beams, by_word, by_frame
            image = self.open_image(path, PREVIEW_SIZE)
        except (ImageLoadError, OSError) as err:  # the upload is gone (cleared, or cleaned up meanwhile)
            return f"**Could not show this file.** {err}", result["caption"], None, beams, [], []
        return "", result["caption"], image, beams, word_heatmaps(image, result["words"], attention, grid), []


def build_app(service: CaptionService, examples: list[str] | None = None, title: str = "Image captioning") -> gr.Blocks:
    limits, defaults = service.limits, service.defaults
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload a photo or a video: the model writes a caption and shows where it looked "
                    "for each word (Show, Attend and Tell). A video is captioned from frames sampled across it.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo (JPEG, PNG, WebP, ...) or video (mp4, avi, webm, mov, mkv)",
                                 type="filepath", elem_id="upload")
                beam_size = gr.Slider(1, limits.max_beam_size, value=defaults["beam_size"], step=1,
                                      label="Beam size", elem_id="beam-size")
                max_length = gr.Slider(5, 40, value=min(defaults["max_length"], 40), step=1,
                                       label="Maximum words", elem_id="max-length")
                run = gr.Button("Caption", variant="primary", elem_id="run")
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[upload], label="Examples")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                with gr.Row():
                    preview = gr.Image(label="Your photo, upright (a video: its most attended frame)", interactive=False, height=320, elem_id="preview")
                    beams = gr.Dataframe(headers=["beam", "score"], label="Top beams", interactive=False, wrap=True,
                                         column_widths=["80%", "20%"], elem_id="beams")
                heatmaps = gr.Gallery(label="Where the model looked, word by word", columns=6, height="auto",
                                      elem_id="attention")
                frames = gr.Gallery(label="Video: the sampled frames and their share of the attention", columns=8,
                                    height="auto", elem_id="frames")
                with gr.Accordion("JSON (what /caption returns)", open=False):
                    result = gr.JSON(elem_id="json")
        gr.on(
            [run.click, upload.change], service.caption_batch, [upload, beam_size, max_length], [result],
            api_name="caption", batch=True, max_batch_size=limits.max_batch_size, concurrency_limit=1,
        ).then(
            service.render, [upload, result], [status, caption, preview, beams, heatmaps, frames],
            api_visibility="private", concurrency_limit=4,
        )
    return app
