"""Per-call settings (decoding, video sampling) from any caller, checked in one place.

Python callers, the command line and web requests all pass their values through ``decoding_settings`` and
``video_sampling``, so a value is accepted or refused the same way everywhere, and a refusal is a
``ParameterError`` that names the setting, the value given and what is allowed. Values may arrive as JSON
numbers or numeric strings (what a web client sends); ``None`` means "the default".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from caption.config import DecodingConfig
from caption.errors import ParameterError


@dataclass(frozen=True)
class DecodingLimits:
    """Upper bounds a server puts on what a request may ask for (None: no bound)."""

    max_beam_size: int | None = None
    max_length: int | None = None


def _number(name: str, value: Any, allowed: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParameterError(name, value, allowed) from None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ParameterError(name, value, allowed)
    return float(value)


def whole_number(name: str, value: Any, default: int | None, low: int = 1, high: int | None = None) -> int | None:
    """``value`` as an int in ``low..high``; ``default`` when it is None."""
    if value is None:
        return default
    allowed = f"choose a whole number from {low} to {high}" if high is not None else f"choose a whole number, {low} or more"
    number = _number(name, value, allowed)
    if number != int(number) or number < low or (high is not None and number > high):
        raise ParameterError(name, value, allowed)
    return int(number)


def non_negative(name: str, value: Any, default: float) -> float:
    if value is None:
        return default
    number = _number(name, value, "choose a number, 0 or more")
    if number < 0:
        raise ParameterError(name, value, "choose a number, 0 or more")
    return number


def decoding_settings(defaults: DecodingConfig, beam_size: Any = None, max_length: Any = None,
                      length_penalty: Any = None, limits: DecodingLimits | None = None) -> DecodingConfig:
    """``defaults`` with the values given (None: keep the default), each checked."""
    limits = limits or DecodingLimits()
    return dataclasses.replace(
        defaults,
        beam_size=whole_number("beam size", beam_size, defaults.beam_size, 1, limits.max_beam_size),
        max_length=whole_number("maximum length", max_length, defaults.max_length, 1, limits.max_length),
        length_penalty=non_negative("length penalty", length_penalty, defaults.length_penalty),
    )


MAX_FRAMES = 256  # frames sampled from one video: the decoder attends over frames x cells at once


def video_sampling(num_frames: Any = None, every_seconds: Any = None) -> dict[str, Any]:
    """``{"num_frames", "every_seconds"}`` for sampling a video (None: the model's default frame count)."""
    frames = whole_number("frames", num_frames, None, 1, MAX_FRAMES)
    every = None
    if every_seconds is not None:
        every = _number("every", every_seconds, "choose a number of seconds above 0")
        if every <= 0:
            raise ParameterError("every", every_seconds, "choose a number of seconds above 0")
    return {"num_frames": frames, "every_seconds": every}
