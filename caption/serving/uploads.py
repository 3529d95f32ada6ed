"""Keep the web demo's uploads from filling the disk.

Gradio stores every upload under its temporary folder and never deletes it on its own. The janitor deletes an
upload once no request has used it for ``keep_seconds`` (long enough to try another beam size on the same
photo), and, whenever uploads take more than ``max_bytes``, the least recently used ones first. An upload that
a request is using is never deleted, and one that no request has used yet (its request may still be in the
queue) is given at least ``unclaimed_seconds`` and is only deleted for space past twice the budget (so uploads
never take more than ``2 * max_bytes`` beyond those in use). It sweeps after every request and every few
seconds in between, so uploads that no request ever uses (a client that only uploads) are bounded too. The
files the server writes for the page (previews, heatmaps) are deleted ``keep_seconds`` after they were made,
except those it had at start (the example photos, which the page's examples point at for good).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, MutableSet
from pathlib import Path

logger = logging.getLogger("caption.uploads")


class UploadJanitor:
    def __init__(self, uploads: MutableSet[str], keep_seconds: float, max_bytes: int,
                 unclaimed_seconds: float = 60.0, sweep_every: float | None = None,
                 outputs: Iterable[MutableSet[str]] = ()):
        """``uploads``: the live set of uploaded paths (Gradio's ``Blocks.upload_file_set``); ``outputs``: the
        live sets of files written for the page (the other ``Blocks.temp_file_sets``). The janitor removes
        from them what it deletes; the output files there now are kept."""
        self.uploads = uploads
        self.outputs = [files for files in outputs if files is not uploads]
        self._kept = set().union(*(files.copy() for files in self.outputs))
        self.keep_seconds = keep_seconds
        self.unclaimed_seconds = max(keep_seconds, unclaimed_seconds)
        self.max_bytes = max_bytes
        self._in_use: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        interval = sweep_every if sweep_every is not None else min(30.0, max(1.0, keep_seconds / 2))
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_every, args=(interval,), name="upload-janitor",
                                         daemon=True)
        self._sweeper.start()

    @contextlib.contextmanager
    def using(self, path: str | None) -> Iterator[None]:
        """Hold ``path`` for the length of a request; sweep when it is released."""
        if path is None:
            yield
            return
        with self._lock:
            self._in_use[path] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[path] -= 1
                if self._in_use[path] <= 0:
                    del self._in_use[path]
                self._last_used[path] = time.time()
            self.sweep()

    def sweep(self) -> int:
        """Delete what has expired, then the least recently used until within budget; returns files
        deleted."""
        with self._lock:
            now = time.time()
            unused: list[tuple[bool, float, str, int]] = []  # (unclaimed, last used, path, bytes)
            total = 0
            for path in self.uploads.copy():  # copy(): the server adds uploads from another thread
                try:
                    info = os.stat(path)
                except OSError:  # deleted by Gradio's own cache cleaning, or never there
                    self._forget(path)
                    continue
                total += info.st_size
                if path in self._in_use:
                    continue
                uploaded = max(info.st_mtime, info.st_ctime)  # an upload of the same bytes again renews it
                used = self._last_used.get(path, 0.0)
                unused.append((used < uploaded, max(uploaded, used), path, info.st_size))
            unused.sort()  # used ones first, each kind oldest first
            deleted = 0
            for unclaimed, last, path, size in unused:
                expired = now - last >= (self.unclaimed_seconds if unclaimed else self.keep_seconds)
                # Over budget, used uploads go; one whose request is still queued only past twice the budget.
                over = total > (2 * self.max_bytes if unclaimed else self.max_bytes)
                if (expired or over) and self._delete(path):
                    logger.debug("deleted the upload %s: %s", path,
                                 "unused for long" if expired else "over budget")
                    total -= size
                    deleted += 1
            return deleted + self._sweep_outputs(now)

    def _sweep_outputs(self, now: float) -> int:
        deleted = 0
        for files in self.outputs:
            for path in files.copy():
                # An input component lists the uploads it received here too: those are the uploads' to clean.
                if path in self._kept or path in self.uploads or path in self._in_use:
                    continue
                try:
                    info = os.stat(path)
                except OSError:
                    files.discard(path)
                    continue
                if now - max(info.st_mtime, info.st_ctime) >= self.keep_seconds and self._delete(path):
                    files.discard(path)
                    deleted += 1
        return deleted

    def _delete(self, path: str) -> bool:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not delete the upload %s: %s", path, err)
            return False
        self._forget(path)
        with contextlib.suppress(OSError):  # Gradio keeps each upload in a folder of its own
            Path(path).parent.rmdir()
        return True

    def _forget(self, path: str) -> None:
        self.uploads.discard(path)
        self._last_used.pop(path, None)

    def _sweep_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one bad sweep
                logger.exception("sweeping the uploads failed")

    def close(self) -> None:
        self._stop.set()
