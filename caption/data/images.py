"""Turn whatever a user hands us (a path, a PIL image, an array) into a normalised image tensor."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from caption.data.files import read_head, sniff, wrong_type
from caption.errors import ErrorKind, ImageLoadError

__all__ = [
    "ImageInput", "ImageLoadError", "ImageTransform", "MAX_IMAGE_PIXELS", "describe", "load_image", "to_rgb",
]

ImageInput = str | Path | Image.Image | np.ndarray

# Larger images are refused as likely decompression bombs (PIL's own limit is a warning only).
MAX_IMAGE_PIXELS = 100_000_000

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DAMAGED_EXIF = "Corrupt EXIF data"  # Pillow's warning; such a photo is used as stored, without its rotation


def describe(item: ImageInput) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array{tuple(item.shape)}"
    return f"{type(item).__name__} image"


def _to_uint8(array: np.ndarray, source: str, bits: int | None = None) -> np.ndarray:
    """Pixel values of any depth to 0..255. Integers are scaled from their bit depth (``bits``; else the
    smallest of 8, 16 or 32 bits that holds the largest value), floats from 0..1 (or 0..255 when they go
    above 1). Values that fit no such range (negative, NaN, floats above 255) are refused, not guessed."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        raise ImageLoadError(source, "the image has no pixels", ErrorKind.UNSUPPORTED)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(source, "some pixel values are NaN or infinite; give finite values from 0 "
                                         "to 1", ErrorKind.UNSUPPORTED)
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ImageLoadError(source, f"floating-point pixel values from {low:g} to {high:g}: expected "
                                         "0 to 1 (or 0 to 255); scale the image to that range first",
                                 ErrorKind.UNSUPPORTED)
        scale = 255.0 if high <= 1.0 else 1.0
        return np.round(array.astype(np.float64) * scale).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageLoadError(source, f"pixels of type {array.dtype} are not numbers", ErrorKind.UNSUPPORTED)
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ImageLoadError(source, f"negative pixel values (down to {low}): expected 0 or more",
                             ErrorKind.UNSUPPORTED)
    if bits is None:
        bits = 8 if high <= 255 else 16 if high <= 65535 else 32
    top = 2**bits - 1
    return np.round(np.minimum(array.astype(np.float64), top) * (255.0 / top)).astype(np.uint8)


def _declared_bits(image: Image.Image) -> int | None:
    """The bit depth a high-depth image's file declares, where it says (16-bit PNG/TIFF modes, TIFF tags)."""
    if image.mode.startswith("I;16"):
        return 16
    tags = getattr(image, "tag_v2", None)
    # TIFF BitsPerSample (and SampleFormat 2: signed)
    if image.mode == "I" and tags is not None and 258 in tags:
        bits = tags[258][0] if isinstance(tags[258], tuple) else int(tags[258])
        return bits - 1 if bits == 32 and _tag_value(tags.get(339)) == 2 else bits
    if image.mode == "I" and image.format == "PNG":
        return 16
    return None


def _tag_value(value) -> int | None:
    return value[0] if isinstance(value, tuple) else value


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    """Composite on white, as a viewer shows transparency, instead of dropping alpha (which shows what the
    transparent pixels happen to hold, often black)."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image, source: str, bits: int | None = None) -> Image.Image:
    """Any Pillow mode as 8-bit RGB that looks like the picture: 16- and 32-bit and float pixels scaled from
    their range (``convert("RGB")`` would clip them to white), transparency on white, palette, bilevel, grey,
    CMYK, YCbCr, LAB and HSV converted. Modes that cannot be shown are refused with ``ImageLoadError``.
    ``bits``: the depth of high-depth pixels, where the file declared it (see ``_declared_bits``)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;"):
        grey = _to_uint8(np.asarray(image), source, bits or _declared_bits(image))  # (H, W)
        return Image.fromarray(grey, "L").convert("RGB")
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _flatten_alpha((image.convert("LA") if mode == "La" else image).convert("RGBA"))
        return image.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(source, f"images in Pillow mode {mode} cannot be shown as RGB ({err}); save it "
                                     "as an 8-bit RGB or grey image", ErrorKind.UNSUPPORTED) from None


def _from_array(array: np.ndarray, source: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(source, f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got "
                                     f"{array.shape}", ErrorKind.UNSUPPORTED)
    pixels = np.ascontiguousarray(_to_uint8(array, source))
    mode = "L" if pixels.ndim == 2 else "RGB" if pixels.shape[2] == 3 else "RGBA"
    return to_rgb(Image.fromarray(pixels, mode), source)


def _upright(image: Image.Image) -> Image.Image:
    """EXIF rotation applied; a photo whose EXIF block is damaged is used as stored rather than refused."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _DAMAGED_EXIF, UserWarning)
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any failure in the EXIF block only loses the rotation
        return image


def load_image(
    item: ImageInput, draft_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Read an image as upright 8-bit RGB (EXIF rotation applied; every pixel mode converted, see
    ``to_rgb``).

    ``draft_size`` lets the JPEG decoder downscale while decoding, which is much faster for large
    photos that are about to be shrunk anyway. Files over ``max_pixels`` are refused before decoding.
    Raises ``ImageLoadError`` naming the input, with a reason and a kind (``caption.errors.ErrorKind``).
    """
    source = describe(item)
    if isinstance(item, np.ndarray):
        image = _from_array(item, source)
    elif isinstance(item, Image.Image):
        image = to_rgb(_upright(item), source)
    elif isinstance(item, (str, Path)):
        return _load_file(Path(item), source, draft_size, max_pixels)
    else:
        raise ImageLoadError(source, "expected a file path, a PIL image or a numpy array",
                             ErrorKind.UNSUPPORTED)
    _check_pixels(image.size, source, max_pixels)
    return image


def _check_pixels(size: tuple[int, int], source: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(source, f"{width}x{height} pixels is over the limit of {max_pixels:,}",
                             ErrorKind.TOO_LARGE)
    if width == 0 or height == 0:
        raise ImageLoadError(source, "the image has no pixels", ErrorKind.UNSUPPORTED)


def _load_file(path: Path, source: str, draft_size: int | None, max_pixels: int) -> Image.Image:
    head = read_head(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", _DAMAGED_EXIF, UserWarning)
            with Image.open(path) as opened:
                _check_pixels(opened.size, source, max_pixels)
                if draft_size and opened.format == "JPEG":
                    opened.draft("RGB", (draft_size, draft_size))
                opened.load()
                # The depth comes from the opened file: the rotated copy no longer has its tags.
                return to_rgb(_upright(opened), source, _declared_bits(opened))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(source, head) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(source, f"refused as a possible decompression bomb ({err})",
                             ErrorKind.TOO_LARGE) from None
    except MemoryError:
        raise ImageLoadError(source, "not enough memory to decode it", ErrorKind.TOO_LARGE) from None
    except PermissionError as err:  # read_head could read it a moment ago; the permissions changed since
        raise ImageLoadError(source, f"permission denied ({err.strerror})", ErrorKind.PERMISSION) from None
    except Exception as err:  # noqa: BLE001 - a damaged file makes Pillow's decoders raise almost anything
        raise ImageLoadError(source, f"the image data is corrupt or truncated ({err or type(err).__name__})",
                             ErrorKind.CORRUPT) from None


def _unidentified(source: str, head: bytes) -> ImageLoadError:
    """Why Pillow did not recognise a file: it is a video or a document, an image format this installation
    cannot decode, or nothing known."""
    wrong = wrong_type(source, head, "image")
    if wrong is not None:
        return wrong
    found = sniff(head)
    if found is not None:  # an image format Pillow knows by name but cannot decode here (HEIC, say)
        return ImageLoadError(source, f"a {found[0]} image, which this installation cannot decode: convert "
                                      "it to JPEG or PNG", ErrorKind.UNSUPPORTED)
    return ImageLoadError(source, "not an image file (unknown or unsupported format)", ErrorKind.NOT_MEDIA)


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
