"""Turn whatever a user hands us (a path, a PIL image, an array) into a normalised image tensor."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | Path | Image.Image | np.ndarray

# Larger images are refused as likely decompression bombs (PIL's own limit is a warning only).
MAX_IMAGE_PIXELS = 100_000_000


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message names the input and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(source, reason)  # both in args, so the error pickles across DataLoader workers
        self.source = source
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def describe(item: ImageInput) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array{tuple(item.shape)}"
    return f"{type(item).__name__} image"


def _from_array(array: np.ndarray, source: str) -> Image.Image:
    if array.ndim == 2:
        array = array[:, :, None].repeat(3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageLoadError(source, f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[2] == 1:
        array = array.repeat(3, axis=2)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images on white, as a viewer would show them, instead of dropping alpha."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(item: ImageInput, draft_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image as upright RGB (EXIF rotation applied, alpha on white, grey/CMYK converted).

    ``draft_size`` lets the JPEG decoder downscale while decoding, which is much faster for large
    photos that are about to be shrunk anyway. Files over ``max_pixels`` are refused before decoding.
    Raises ``ImageLoadError`` naming the input.
    """
    source = describe(item)
    if isinstance(item, np.ndarray):
        return _from_array(item, source)
    if isinstance(item, Image.Image):
        return _flatten_alpha(ImageOps.exif_transpose(item))
    if not isinstance(item, (str, Path)):
        raise ImageLoadError(source, "expected a file path, a PIL image or a numpy array")
    path = Path(item)
    if not path.is_file():
        raise ImageLoadError(source, "file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(source, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageLoadError(source, f"{width}x{height} pixels is over the limit of {max_pixels:,}")
                if draft_size and opened.format == "JPEG":
                    opened.draft("RGB", (draft_size, draft_size))
                opened.load()
                return _flatten_alpha(ImageOps.exif_transpose(opened))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not an image file (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(source, f"refused as a possible decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(source, f"the image data is corrupt or truncated ({err})") from None


class ImageTransform:
    """Squash-resize to a square (the Flickr8k photos were squashed, not cropped) and normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0  # (S, S, 3)
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, S, S)
        return (tensor - self.mean) / self.std

    def load(self, item: ImageInput) -> torch.Tensor:
        return self(load_image(item, draft_size=self.image_size))
