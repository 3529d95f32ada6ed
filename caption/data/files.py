"""A user's file before it is decoded: can it be read at all, and what is it really, whatever its name says.

Both loaders (images and videos) start here, so a missing file, a broken or looping link, a folder, an
unreadable or empty file gets the same reason everywhere, and a file whose content is not what its extension
says (a JPEG named .mp4) is named for what it is instead of failing deep inside a decoder.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from caption.errors import ErrorKind, ImageLoadError

HEAD_BYTES = 64  # enough for every signature below

# (magic bytes at the start, format name, family); the family is "image", "video" or "other".
_SIGNATURES: list[tuple[bytes, str, str]] = [
    (b"\xff\xd8\xff", "JPEG", "image"),
    (b"\x89PNG\r\n\x1a\n", "PNG", "image"),
    (b"GIF87a", "GIF", "image"),
    (b"GIF89a", "GIF", "image"),
    (b"II*\x00", "TIFF", "image"),
    (b"MM\x00*", "TIFF", "image"),
    (b"BM", "BMP", "image"),
    (b"8BPS", "Photoshop", "image"),
    (b"\x1a\x45\xdf\xa3", "Matroska/WebM", "video"),
    (b"\x00\x00\x01\xba", "MPEG", "video"),
    (b"FLV", "FLV", "video"),
    (b"\x30\x26\xb2\x75", "ASF/WMV", "video"),
    (b"OggS", "Ogg", "video"),
    (b"%PDF", "PDF document", "other"),
    (b"PK\x03\x04", "ZIP archive", "other"),
    (b"\x1f\x8b", "gzip archive", "other"),
    (b"ID3", "MP3 audio", "other"),
]
_RIFF = {b"WEBP": ("WebP", "image"), b"AVI ": ("AVI", "video"), b"WAVE": ("WAV audio", "other")}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff(head: bytes) -> tuple[str, str] | None:
    """(format name, family) from a file's first bytes, or None when they match nothing known."""
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return ("AVIF" if brand.startswith(b"avi") else "HEIC", "image")
        return ("QuickTime" if brand == b"qt  " else "MP4", "video")
    if head[4:8] in _QUICKTIME_ATOMS:
        return "QuickTime", "video"
    for magic, name, family in _SIGNATURES:
        if head.startswith(magic):
            return name, family
    if head and _looks_like_text(head):
        return "text", "other"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the head is still text
        if err.start < len(head) - 3:
            return False
        text = head[: err.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


def read_head(path: str | Path, error: type[ImageLoadError] = ImageLoadError) -> bytes:
    """The first bytes of a regular, non-empty file that this process may read; else ``error`` saying which of
    missing, broken link, link loop, not a file, permission denied, I/O error or empty it is."""
    source = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(source, f"a broken symbolic link: its target {os.readlink(path)} does not exist",
                        ErrorKind.BROKEN_LINK) from None
        raise error(source, "file not found", ErrorKind.MISSING) from None
    except OSError as err:
        raise _os_error(source, err, error) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(source, "a folder, not a file", ErrorKind.NOT_A_FILE)
    if not stat.S_ISREG(info.st_mode):  # never open a pipe or a device: reading one can block for ever
        raise error(source, "not a regular file (a device, pipe or socket)", ErrorKind.NOT_A_FILE)
    if info.st_size == 0:
        raise error(source, "the file is empty (0 bytes)", ErrorKind.EMPTY)
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError as err:
        raise _os_error(source, err, error) from None


def _os_error(source: str, err: OSError, error: type[ImageLoadError] = ImageLoadError) -> ImageLoadError:
    """An operating-system error while opening or reading ``source``, said in words, with its kind."""
    code = err.errno
    if code == errno.ELOOP:
        return error(source, "a symbolic link loop: the links point at each other and never reach a file",
                     ErrorKind.LINK_LOOP)
    if code in (errno.EACCES, errno.EPERM):
        return error(source, "permission denied: this user may not read the file (check its permissions)",
                     ErrorKind.PERMISSION)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return error(source, "file not found", ErrorKind.MISSING)
    if code == errno.EISDIR:
        return error(source, "a folder, not a file", ErrorKind.NOT_A_FILE)
    if code == errno.ENAMETOOLONG:
        return error(source, "the path is too long for the file system", ErrorKind.MISSING)
    return error(source, f"the file cannot be read ({err.strerror or err})", ErrorKind.UNREADABLE)


_SPOKEN_WITH_A_VOWEL = frozenset({"MP4", "MPEG", "FLV", "HEIC", "MP3 audio"})  # "an MP4", "an HEIC"


def _a(word: str) -> str:
    return f"{'an' if word in _SPOKEN_WITH_A_VOWEL or word[0].lower() in 'aeiou' else 'a'} {word}"


_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp", "WebP": ".webp",
               "AVI": ".avi", "MP4": ".mp4", "QuickTime": ".mov", "Matroska/WebM": ".mkv"}


def wrong_type(
    source: str, head: bytes, wanted: str, error: type[ImageLoadError] = ImageLoadError,
) -> ImageLoadError | None:
    """The error for a file that is not ``wanted`` ("image" or "video") when its first bytes say what it is
    instead; None when they do not (then the decoder's own failure is the best explanation)."""
    found = sniff(head)
    if found is None or found[1] == wanted:
        return None
    name, family = found
    if family == "other":
        what = "a text file" if name == "text" else _a(name)
        return error(source, f"not {_a(wanted)} file: it is {what}", ErrorKind.NOT_MEDIA)
    suffix = Path(source).suffix.lower()
    if suffix == _EXTENSIONS.get(name):
        return error(source, f"{_a(name)} {family}, not {_a(wanted)}", ErrorKind.WRONG_TYPE)
    rename = (
        f"; rename it to {_EXTENSIONS[name]} to caption it as {_a(family)}" if name in _EXTENSIONS else ""
    )
    named = f"named {suffix}" if suffix else "without an extension"
    return error(source, f"{_a(name)} {family} {named}, not {_a(wanted)}{rename}", ErrorKind.WRONG_TYPE)
