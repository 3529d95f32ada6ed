"""Read the frames a caption needs from a video file with OpenCV, and split long videos into scenes.

Sampling seeks to each wanted frame, so its cost grows with the number of frames, not the video's length.
Where the container cannot seek (no index, or a seek that lands on the wrong frame) it falls back to one
sequential pass that grabs frames without converting them and keeps only the wanted ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from caption.data.files import read_head, sniff, wrong_type
from caption.data.images import ImageTransform
from caption.errors import ErrorKind, VideoLoadError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".webm", ".mov", ".mkv"})
MAX_VIDEO_SECONDS = 20 * 60.0  # longer videos are refused: sampling stays cheap, scene detection does not


def is_video(item: object) -> bool:
    return isinstance(item, (str, Path)) and Path(item).suffix.lower() in VIDEO_EXTENSIONS


def _cv2():
    # FFmpeg prints a line per damaged packet ("Invalid NAL unit size"); we report the file once, in words.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("reading videos needs OpenCV: pip install opencv-python-headless") from err
    return cv2


@dataclass
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps


@dataclass
class Frames:
    """Frames sampled from one video: RGB images, their frame numbers and times in seconds."""

    source: str
    images: list[Image.Image]
    indices: list[int]
    times: list[float]
    info: VideoInfo


def _open(path: str | Path):
    """An opened ``cv2.VideoCapture``; a file that cannot be one is refused first for what it really is."""
    cv2 = _cv2()
    source = str(path)
    head = read_head(path, VideoLoadError)
    wrong = wrong_type(source, head, "video", VideoLoadError)
    if wrong is not None:  # OpenCV would open a JPEG as a one-frame "video" and then fail to decode it
        raise wrong
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        if sniff(head) is not None:
            raise VideoLoadError(source, "cannot be opened as a video: truncated before its index, or a "
                                         "codec OpenCV cannot read", ErrorKind.CORRUPT)
        raise VideoLoadError(source, "cannot be opened as a video: not a video, or a format OpenCV cannot "
                                     "read (use mp4, avi, webm, mov or mkv)", ErrorKind.NOT_MEDIA)
    return capture


def _check_length(info: VideoInfo, source: str, max_seconds: float) -> None:
    if info.duration > max_seconds:
        raise VideoLoadError(source, f"{info.duration:.0f} s is over the limit of {max_seconds:.0f} s; "
                                     "cut it shorter or raise the limit", ErrorKind.TOO_LARGE)


def probe(path: str | Path, max_seconds: float = MAX_VIDEO_SECONDS) -> VideoInfo:
    """Frame count, frame rate and size from the container; refuses empty and over-long videos."""
    capture = _open(path)
    try:
        info = _info(capture, path)
    finally:
        capture.release()
    _check_length(info, str(path), max_seconds)
    return info


def _info(capture, path: str | Path) -> VideoInfo:
    cv2 = _cv2()
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not fps or fps != fps or fps <= 0:
        fps = 25.0  # some containers do not say; only times depend on it
    if count <= 0:
        count = _count_frames(capture)
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if count <= 0:
        raise VideoLoadError(str(path), "the video has no frames", ErrorKind.CORRUPT)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return VideoInfo(frame_count=count, fps=float(fps), width=width, height=height)


def _count_frames(capture) -> int:
    count = 0
    while capture.grab():
        count += 1
    return count


def sample_indices(info: VideoInfo, num_frames: int | None = 8, every_seconds: float | None = None,
                   start: float = 0.0, end: float | None = None) -> list[int]:
    """Frame numbers to read between ``start`` and ``end`` seconds: ``num_frames`` at the centres of equal
    segments, or one every ``every_seconds`` (from the first segment's centre). Always at least one."""
    first = min(int(start * info.fps), info.frame_count - 1)
    last = (
        info.frame_count if end is None
        else min(info.frame_count, max(first + 1, int(round(end * info.fps))))
    )
    span = last - first
    if every_seconds:
        step = max(1.0, every_seconds * info.fps)
        count = max(1, int(span // step))
    elif num_frames and num_frames > 0:
        count, step = num_frames, span / num_frames
    else:
        raise ValueError("give num_frames (at least 1) or every_seconds")
    return [min(last - 1, first + int((i + 0.5) * step)) for i in range(count)]


def _to_image(frame: np.ndarray, max_side: int | None) -> Image.Image:
    image = Image.fromarray(frame[:, :, ::-1].copy(), "RGB")  # OpenCV gives BGR
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.BILINEAR)
    return image


def _read_by_seeking(capture, indices: list[int], max_side: int | None) -> dict[int, Image.Image] | None:
    """The frames at ``indices``, or None where the container's seeking cannot be trusted."""
    cv2 = _cv2()
    frames: dict[int, Image.Image] = {}
    for index in sorted(set(indices)):
        if (not capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                or int(capture.get(cv2.CAP_PROP_POS_FRAMES)) != index):
            return None
        ok, frame = capture.read()
        if not ok:
            return None
        frames[index] = _to_image(frame, max_side)
    return frames


def _read_sequentially(capture, indices: list[int], max_side: int | None) -> dict[int, Image.Image]:
    cv2 = _cv2()
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    wanted, frames, position = set(indices), {}, 0
    last = max(indices)
    while position <= last and capture.grab():  # grab() skips the colour conversion of unwanted frames
        if position in wanted:
            ok, frame = capture.retrieve()
            if ok:
                frames[position] = _to_image(frame, max_side)
        position += 1
    return frames


def read_frames(
    path: str | Path,
    num_frames: int | None = 8,
    every_seconds: float | None = None,
    *,
    start: float = 0.0,
    end: float | None = None,
    max_side: int | None = None,
    seek: bool = True,
    max_seconds: float = MAX_VIDEO_SECONDS,
) -> Frames:
    """Sample frames (see ``sample_indices``) as upright RGB images at most ``max_side`` px.

    Raises ``VideoLoadError`` naming the file: not found, empty, not a video, no frames, over
    ``max_seconds``, or truncated/corrupt (a wanted frame cannot be decoded)."""
    source = str(path)
    capture = _open(path)
    try:
        info = _info(capture, path)
        _check_length(info, source, max_seconds)
        indices = sample_indices(info, num_frames, every_seconds, start, end)
        frames = _read_by_seeking(capture, indices, max_side) if seek else None
        if frames is None:
            frames = _read_sequentially(capture, indices, max_side)
    finally:
        capture.release()
    missing = [i for i in indices if i not in frames]
    if missing:
        raise VideoLoadError(source, f"the video is truncated or corrupt: frame {missing[0]} of the "
                                     f"{info.frame_count} it declares cannot be decoded", ErrorKind.CORRUPT)
    return Frames(source=source, images=[frames[i] for i in indices], indices=indices,
                  times=[round(i / info.fps, 3) for i in indices], info=info)


def detect_scenes(
    path: str | Path,
    *,
    threshold: float = 0.5,
    min_seconds: float = 2.0,
    step_seconds: float = 0.5,
    max_seconds: float = MAX_VIDEO_SECONDS,
) -> list[tuple[float, float]]:
    """Split a video into scenes where the colour histogram changes sharply; returns (start, end) seconds.

    Frames are compared every ``step_seconds`` (one sequential pass: this, unlike sampling, reads the whole
    video); a cut needs a Bhattacharyya distance over ``threshold`` and scenes last ``min_seconds`` or
    more."""
    cv2 = _cv2()
    capture = _open(path)
    try:
        info = _info(capture, path)
        _check_length(info, str(path), max_seconds)
        step = max(1, int(round(step_seconds * info.fps)))
        cuts, previous, position = [0.0], None, 0
        while capture.grab():
            if position % step == 0:
                ok, frame = capture.retrieve()
                if ok:
                    small = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA)
                    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
                    # Hue, saturation and brightness: a cut from a dark to a bright grey room is a cut too.
                    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4],  # (8, 4, 4)
                                        [0, 180, 0, 256, 0, 256])
                    hist = cv2.normalize(hist, hist).flatten()  # (128,)
                    time = position / info.fps
                    if previous is not None and time - cuts[-1] >= min_seconds and \
                            cv2.compareHist(previous, hist, cv2.HISTCMP_BHATTACHARYYA) > threshold:
                        cuts.append(time)
                    previous = hist
            position += 1
    finally:
        capture.release()
    duration = max(position, 1) / info.fps
    if len(cuts) > 1 and duration - cuts[-1] < min_seconds:  # a last scene too short to caption: merge it
        cuts.pop()
    return [(round(a, 3), round(b, 3)) for a, b in zip(cuts, [*cuts[1:], duration])]


class VideoTransform:
    """A video file to its ``num_frames`` uniformly sampled frames, each as ``ImageTransform`` makes them."""

    def __init__(
        self, image_transform: ImageTransform, num_frames: int, max_seconds: float = MAX_VIDEO_SECONDS,
    ):
        self.image_transform = image_transform
        self.num_frames = num_frames
        self.max_seconds = max_seconds

    def load(self, item: str | Path) -> torch.Tensor:
        frames = read_frames(item, self.num_frames, max_side=2 * self.image_transform.image_size,
                             max_seconds=self.max_seconds)
        return torch.stack([self.image_transform(image) for image in frames.images])  # (F, 3, S, S)
