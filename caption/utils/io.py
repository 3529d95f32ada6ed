"""Atomic writes: a reader (or a resumed run) sees the old file or the new one, never half of one; and a
lock, so that two writers of one output never interleave."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it, process-wide


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_replace_dir(build: Callable[[Path], None], target: str | Path) -> Path:
    """Build a directory under a temporary name next to ``target``, then swap it into place.

    The old directory, if any, is renamed aside before the new one is renamed in, so at every instant
    ``target`` is either the complete old directory, the complete new one, or (for the instant between
    the two renames) absent, in which case ``target`` + ``.old`` is still complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)
        build(staging)
        for child in staging.iterdir():
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        old = target.with_name(target.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


_TEMPORARY = re.compile(r"\.(.+)\.[^.]+\.tmp")  # atomic_write's and atomic_replace_dir's names


def final_path(path: str | Path) -> Path:
    """What a temporary file or folder of ``atomic_write``/``atomic_replace_dir`` becomes (``path`` else):
    messages name the file the user asked for."""
    parts = [match.group(1) if (match := _TEMPORARY.fullmatch(part)) else part for part in Path(path).parts]
    return Path(*parts)


def no_space_error(path: str | Path, needed: int | None = None) -> OSError:
    """The error for a write to ``path`` that found its disk full: where, how much it needed, how much is
    free."""
    path = final_path(path)
    disk = next(folder for folder in path.parents if folder.exists())  # a checkpoint's folder may not yet
    free = shutil.disk_usage(disk).free
    need = f"it needs {needed / 2**20:,.0f} MB, " if needed else ""
    return OSError(f"{path}: not enough disk space ({need}{free / 2**20:,.0f} MB free on {disk}): "
                   "free some space or write to another disk")


def reserve_space(path: str | Path) -> None:
    """Allocate the whole of ``path`` (its current size) on disk now, so a full disk is an error here, not a
    SIGBUS when a memory-mapped page is first written."""
    path = Path(path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(path, size) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: go on
            raise
    finally:
        os.close(fd)


class BusyError(ValueError):
    """Another process holds the lock on what this one would write."""


@contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock file at ``path`` for the block, or raise ``BusyError`` naming the process that
    holds it (``what``: how the message names the thing being written). The file holds the holder's pid
    and is removed on exit; a lock file whose process died is taken over (the kernel frees its lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{what} is being written by another process (pid {holder}, lock {path}): wait "
                            "for it to finish, or write somewhere else") from None
        try:  # the holder may have removed the file between our open and our lock: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from None
