"""The errors a user can cause, each naming what was wrong (the file, or the parameter) and what to do.

Every surface (``Captioner.caption``, ``caption predict``, ``caption batch``, the web demo) reports bad input
through these two classes, so the same bad file gets the same words everywhere:

- ``ImageLoadError`` (and ``VideoLoadError``): one input could not be captioned. ``source`` names it,
  ``reason`` says why, ``kind`` sorts it (see ``ErrorKind``); the other inputs of the same call go on.
- ``ParameterError``: a setting (beam size, maximum length, ...) is out of range or not a number; it names the
  setting, the value given and the values allowed.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorKind(str, Enum):
    """Why an input could not be captioned."""

    MISSING = "missing"  # no such file
    BROKEN_LINK = "broken-link"  # a symbolic link whose target does not exist
    LINK_LOOP = "link-loop"  # symbolic links that point at each other
    NOT_A_FILE = "not-a-file"  # a folder, a device, a socket
    PERMISSION = "permission"  # the file exists but may not be read
    UNREADABLE = "unreadable"  # the disk or file system failed while reading (I/O error)
    EMPTY = "empty"  # zero bytes
    WRONG_TYPE = "wrong-type"  # a real image or video under the other kind's extension
    NOT_MEDIA = "not-media"  # not an image or video at all (text, PDF, ...)
    CORRUPT = "corrupt"  # the right kind of file, but its data is damaged or cut short
    TOO_LARGE = "too-large"  # over a pixel, size or duration limit
    UNSUPPORTED = "unsupported"  # a valid file whose pixel format cannot be shown as a photo
    PARAMETER = "parameter"  # a setting of the request (beam size, ...) is not allowed: see ParameterError
    SERVER = "server"  # the input was fine, but the server failed (out of memory, say): try again later
    BUSY = "busy"  # the server holds all the work it can now (queue or upload space): retry after a while
    UNAUTHORIZED = "unauthorized"  # the server asks for its API token and the request did not carry it


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message names the input and the reason."""

    def __init__(self, source: str, reason: str, kind: ErrorKind | str = ErrorKind.CORRUPT):
        # All three in args, so the error pickles across DataLoader workers.
        super().__init__(source, reason, ErrorKind(kind))
        self.source = source
        self.reason = reason
        self.kind = ErrorKind(kind)

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"

    def renamed(self, source: str) -> ImageLoadError:
        """The same error under another name (an upload's original name instead of its temporary path)."""
        return type(self)(source, self.reason, self.kind)


class VideoLoadError(ImageLoadError):
    """A video could not be read; the message names the file and the reason."""


class ParameterError(ValueError):
    """A setting is not a number or is out of range; the message names it and says what is allowed."""

    kind = ErrorKind.PARAMETER

    def __init__(self, name: str, value: Any, allowed: str):
        super().__init__(name, value, allowed)
        self.name = name
        self.value = value
        self.allowed = allowed

    def __str__(self) -> str:
        return f"{self.name} {self.value!r} is not allowed: {self.allowed}"


class EngineError(RuntimeError):
    """A batch engine (Ray) failed outside any one input: the message says why and what to do."""


class ServerBusy(RuntimeError):
    """The server refuses new work it could not hold (its queue or its upload space is full); nothing it
    accepted is dropped. ``retry_after`` is when to try again, in whole seconds."""

    kind = ErrorKind.BUSY

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason, retry_after)
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"the server is busy: {self.reason}; try again in {self.retry_after} s"
