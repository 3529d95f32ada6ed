"""Draw where the decoder looked: one attention heatmap over the image per word of the caption."""

from __future__ import annotations

import numpy as np
from PIL import Image

# An "inferno"-like ramp: black, purple, orange, pale yellow for weights 0 .. 1.
_RAMP_POINTS = np.array([0.0, 0.33, 0.66, 1.0])
_RAMP_COLOURS = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], dtype=np.float32)


def colourise(weights: np.ndarray) -> np.ndarray:
    """(H, W) weights in [0, 1] to (H, W, 3) colours in [0, 255]."""
    return np.stack([np.interp(weights, _RAMP_POINTS, _RAMP_COLOURS[:, i]) for i in range(3)], axis=-1)


def attention_overlay(image: Image.Image, weights: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """``weights`` (N,) over a ``grid`` of rows x cols cells, drawn over ``image``: the attended cells stay
    bright and take the ramp's colour, the rest fade to dark, as in the Show, Attend and Tell figures."""
    rows, cols = grid
    cells = np.asarray(weights, dtype=np.float32).reshape(rows, cols)  # (rows, cols)
    cells = cells / max(float(cells.max()), 1e-8)  # the word's own peak is 1
    heat = Image.fromarray(cells, mode="F").resize(image.size, Image.BILINEAR)
    heat_map = np.clip(np.asarray(heat), 0.0, 1.0)[..., None]  # (H, W, 1)
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    shaded = photo * (0.25 + 0.75 * heat_map)  # (H, W, 3)
    blended = 0.65 * shaded + 0.35 * colourise(heat_map[..., 0])  # (H, W, 3)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


def word_heatmaps(
    image: Image.Image, words: list[str], attention: np.ndarray, grid: tuple[int, int], size: int = 256
) -> list[tuple[Image.Image, str]]:
    """One (overlay, word) per word; ``attention`` is (len(words), N). Drawn on a copy at most ``size`` px."""
    small = image.convert("RGB")
    small.thumbnail((size, size))
    attention = np.asarray(attention)
    if attention.shape != (len(words), grid[0] * grid[1]):
        raise ValueError(f"attention of shape {attention.shape} does not fit {len(words)} words over a "
                         f"{grid[0]}x{grid[1]} grid")
    return [(attention_overlay(small, attention[t], grid), word) for t, word in enumerate(words)]


def video_word_heatmaps(
    frames: list[Image.Image], times: list[float], words: list[str], attention: np.ndarray,
    grid: tuple[int, int], size: int = 256,
) -> tuple[list[tuple[Image.Image, str]], list[tuple[Image.Image, str]]]:
    """For a video captioned over frames x cells: (one overlay per word on the frame it looked at most,
    each frame labelled with its time and its share of the caption's attention)."""
    cells = grid[0] * grid[1]
    attention = np.asarray(attention).reshape(len(words), len(frames), cells)  # (T, F, N)
    per_frame = attention.sum(axis=2)  # (T, F)
    small = []
    for frame in frames:
        copy = frame.convert("RGB")
        copy.thumbnail((size, size))
        small.append(copy)
    by_word = []
    for t, word in enumerate(words):
        f = int(per_frame[t].argmax())
        by_word.append((attention_overlay(small[f], attention[t, f], grid),
                        f"{word} · frame {f + 1} ({times[f]:.1f} s)"))
    share = per_frame.mean(axis=0)  # (F,)
    by_frame = [(image, f"{times[f]:.1f} s · {share[f]:.0%}") for f, image in enumerate(small)]
    return by_word, by_frame
