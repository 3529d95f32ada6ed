"""Synthetic videos for tests and benchmarks: a coloured shape moving left or right across a plain frame.

A single frame shows where the shape is, not where it is going, so a captioner can only get the direction
right by comparing frames: the task the temporal model is tested on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"red": (0, 0, 230), "green": (0, 200, 0), "blue": (230, 60, 0), "yellow": (0, 220, 240)}  # BGR
SHAPES = ("square", "circle")
DIRECTIONS = ("left", "right")


def moving_shape_caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moves to the {direction}"


def write_moving_shape_video(
    path: str | Path,
    colour: str = "red",
    shape: str = "square",
    direction: str = "right",
    *,
    seconds: float = 2.0,
    fps: float = 10.0,
    size: tuple[int, int] = (160, 120),
    start: float = 0.1,
    codec: str = "mp4v",
) -> Path:
    """Write a video of ``shape`` crossing the frame towards ``direction``, starting ``start`` of the way
    in."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with codec {codec!r}")
    frames = max(2, int(round(seconds * fps)))
    radius = height // 6
    try:
        for i in range(frames):
            progress = start + (1 - 2 * start) * i / (frames - 1)  # start .. 1 - start of the way across
            x = round(width * (progress if direction == "right" else 1 - progress))
            frame = np.full((height, width, 3), 40, dtype=np.uint8)  # (H, W, 3) dark grey
            if shape == "circle":
                cv2.circle(frame, (x, height // 2), radius, COLOURS[colour], -1)
            else:
                cv2.rectangle(frame, (x - radius, height // 2 - radius), (x + radius, height // 2 + radius),
                              COLOURS[colour], -1)
            writer.write(frame)
    finally:
        writer.release()
    return path
