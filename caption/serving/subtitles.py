"""Captions of a video's scenes as subtitles: WebVTT or SubRip, one cue per scene."""

from __future__ import annotations

from collections.abc import Sequence

from caption.api import CaptionResult


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(results: Sequence[CaptionResult]) -> list[tuple[float, float, str]]:
    cues = []
    for result in results:
        if result.segment is None:
            raise ValueError(f"{result.source}: subtitles need scene captions "
                             "(caption_video(..., scenes=True))")
        if result.ok and result.segment[1] > result.segment[0]:
            cues.append((result.segment[0], result.segment[1], result.text))
    return cues


def to_webvtt(results: Sequence[CaptionResult]) -> str:
    lines = ["WEBVTT", ""]
    for number, (start, end, text) in enumerate(_cues(results), 1):
        lines += [str(number), f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}", text, ""]
    return "\n".join(lines)


def to_srt(results: Sequence[CaptionResult]) -> str:
    lines = []
    for number, (start, end, text) in enumerate(_cues(results), 1):
        lines += [str(number), f"{_timestamp(start, ',')} --> {_timestamp(end, ',')}", text, ""]
    return "\n".join(lines)
