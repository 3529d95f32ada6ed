"""Per-call settings (decoding, video sampling) from any caller, checked in one place.

Python callers, the command line and web requests all pass their values through ``decoding_settings`` and
``video_sampling``, so a value is accepted or refused the same way everywhere, and a refusal is a
``ParameterError`` that names the setting, the value given and what is allowed. Values may arrive as JSON
numbers or numeric strings (what a web client sends); ``None`` means "the default".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from caption.config import DecodingConfig, setting_label
from caption.errors import ParameterError

# Upper bounds a server puts on what a request may ask for, by setting (e.g. {"beam_size": 10}); a setting
# not named has no bound.
DecodingLimits = Mapping[str, float]


def _number(name: str, value: Any, allowed: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParameterError(name, value, allowed) from None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ParameterError(name, value, allowed)
    return float(value)


def whole_number(
    name: str, value: Any, default: int | None, low: int = 1, high: int | None = None
) -> int | None:
    """``value`` as an int in ``low..high``; ``default`` when it is None."""
    if value is None:
        return default
    allowed = (f"choose a whole number from {low} to {high}" if high is not None
               else f"choose a whole number, {low} or more")
    number = _number(name, value, allowed)
    if number != int(number) or number < low or (high is not None and number > high):
        raise ParameterError(name, value, allowed)
    return int(number)


def bounded_number(name: str, value: Any, low: float, high: float | None = None,
                   exclusive: bool = False) -> float:
    """``value`` as a float from ``low`` (above it, if ``exclusive``) to ``high``."""
    if high is not None:
        allowed = f"choose a number {'above' if exclusive else 'from'} {low:g} to {high:g}"
    else:
        allowed = f"choose a number above {low:g}" if exclusive else f"choose a number, {low:g} or more"
    number = _number(name, value, allowed)
    if number < low or (exclusive and number == low) or (high is not None and number > high):
        raise ParameterError(name, value, allowed)
    return number


def decoding_settings(defaults: DecodingConfig, values: Mapping[str, Any] | None = None,
                      limits: DecodingLimits | None = None) -> DecodingConfig:
    """``defaults`` with the public settings given in ``values`` (a value None keeps the default), each
    checked against its field's type and minimum (``DecodingConfig``) and ``limits``. A name that is no
    public setting is a ``TypeError`` (a caller's mistake, not a request's)."""
    fields = {f.name: f for f in DecodingConfig.public_fields()}
    unknown = sorted(set(values or {}) - set(fields))
    if unknown:
        raise TypeError(f"unknown decoding setting(s) {', '.join(unknown)}: choose from {', '.join(fields)}")
    limits = limits or {}
    chosen = {}
    for name, value in (values or {}).items():
        if value is None:
            continue
        f = fields[name]
        label = setting_label(f)
        minimum, high = f.metadata["minimum"], limits.get(name)
        if f.metadata["whole"]:
            chosen[name] = whole_number(label, value, None, int(minimum), None if high is None else int(high))
        else:
            chosen[name] = bounded_number(label, value, minimum, high, exclusive=f.metadata["exclusive"])
    return dataclasses.replace(defaults, **chosen)


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
