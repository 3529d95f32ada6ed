"""The Gradio page: upload a photo or a video, get its caption, the top beams, and where it looked.

One event, ``/caption``, does the work for the page and for ``gradio_client`` alike: it is
``CaptionService.caption`` (``caption.serving.service``), which judges each request on its own and batches
the good ones with the HTTP API's. Gradio's own input checks are off for this event (``preprocess=False``):
they run on a whole batch at once and would fail all of it for one bad value. A second, private step draws
the page from the JSON (``render``).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from caption.config import DecodingConfig, setting_label
from caption.data.video import read_frames
from caption.errors import ImageLoadError
from caption.serving.heatmaps import video_word_heatmaps, word_heatmaps
from caption.serving.service import CaptionService

PREVIEW_SIZE = 768  # the page's copy of a photo: JPEGs decode straight to about this size (draft mode)


def render(service: CaptionService, path: str | None, result: dict | None):
    """The page from ``/caption``'s JSON: status, caption, upright image (a video's most attended frame),
    beams, one heatmap per word, and a video's sampled frames."""
    if not result:
        return "", "", None, [], [], []
    if "error" in result:
        return f"**Could not caption this file.** {result['error']}", "", None, [], [], []
    beams = [[beam["text"], beam["score"]] for beam in result["beams"]]
    attention, grid = np.array(result["attention"]), tuple(result["grid"])
    try:
        with service.holding(path):
            if "frame_times" in result:
                times = result["frame_times"]
                frames = read_frames(path, len(times), max_side=PREVIEW_SIZE,
                                     max_seconds=service.limits.max_video_seconds).images
                by_word, by_frame = video_word_heatmaps(frames, times, result["words"], attention, grid)
                shares = attention.reshape(len(result["words"]), len(times), -1).sum(axis=(0, 2))  # (F,)
                return "", result["caption"], frames[int(shares.argmax())], beams, by_word, by_frame
            image = service.open_image(path, PREVIEW_SIZE)
    except ImageLoadError as err:  # the upload is gone (cleared, or cleaned up meanwhile)
        return (f"**Could not show this file.** {err.renamed(Path(path).name)}", result["caption"], None,
                beams, [], [])
    return "", result["caption"], image, beams, word_heatmaps(image, result["words"], attention, grid), []


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
            lambda path, answer: render(service, path, answer), [upload, result],
            [status, caption, preview, beams, heatmaps, frames],
            api_visibility="private", concurrency_limit=4,
        )
    service.watch_uploads(app.upload_file_set, outputs=app.temp_file_sets)
    return app
