"""Keep the server's uploads within their disk budget without ever deleting one that accepted work needs.

Gradio stores every upload under its temporary folder and never deletes it on its own. The janitor deletes
an upload once no request has used it for ``keep_seconds`` (long enough to try another beam size on the same
photo), and one that no request has used yet after ``unclaimed_seconds`` (a client that only uploads). Its
request may still be in the queue, so an unclaimed upload is never deleted for space, and neither is one a
request is using: the budget is kept by refusing new uploads instead (``reserve`` raises ``ServerBusy``),
after first deleting uploads whose requests are answered, least recently used first. So uploads never take
more than ``max_bytes``, and no request that was accepted finds its file gone.

Every upload on its way in holds its size of the budget (``reserve``): Gradio's uploads while their bytes
arrive, the HTTP API's for the life of their request (those are the API's own files, deleted when answered).
It sweeps after every request and every few seconds in between. The files the server writes for the page
(previews, heatmaps) are deleted ``keep_seconds`` after they were made, except those it had at start (the
example photos, which the page's examples point at for good).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableSet
from pathlib import Path

from caption.errors import ServerBusy

logger = logging.getLogger("caption.uploads")

REMEMBERED_DELETIONS = 10_000  # why an upload went is kept for this many, to tell a page that asks again


class UploadJanitor:
    def __init__(self, uploads: MutableSet[str], keep_seconds: float, max_bytes: int,
                 unclaimed_seconds: float = 600.0, sweep_every: float | None = None,
                 outputs: Iterable[MutableSet[str]] = (), retry_after: Callable[[], int] = lambda: 5):
        """``uploads``: the live set of uploaded paths (Gradio's ``Blocks.upload_file_set``); ``outputs``: the
        live sets of files written for the page (the other ``Blocks.temp_file_sets``). The janitor removes
        from them what it deletes; the output files there now are kept. ``retry_after``: the seconds a
        refused upload is told to wait (about when the queued requests are answered)."""
        self.uploads = uploads
        self.outputs = [files for files in outputs if files is not uploads]
        self._kept = set().union(*(files.copy() for files in self.outputs))
        self.keep_seconds = keep_seconds
        self.unclaimed_seconds = max(keep_seconds, unclaimed_seconds)
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.held_bytes = 0  # uploads on disk at the last sweep, plus those on their way in
        self._reserved = 0
        self._in_use: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()  # path -> why it was deleted
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

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of the budget for an upload on its way in; raises ``ServerBusy`` when even
        deleting every answered request's upload would not make room."""
        with self._lock:
            self._sweep(incoming=size)
            if self.held_bytes + size > self.max_bytes:
                raise ServerBusy(f"{self.held_bytes / 2**20:.1f} of its {self.max_bytes / 2**20:g} MB for "
                                 "uploads hold requests that are not answered yet, and this upload needs "
                                 f"{size / 2**20:.1f} MB more", self.retry_after())
            self._reserved += size
            self.held_bytes += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size
                self.held_bytes -= size

    def why_gone(self, path: str) -> str | None:
        """Why the janitor deleted ``path`` (None: it did not)."""
        with self._lock:
            return self._gone.get(path)

    def sweep(self) -> int:
        """Delete what has expired, then answered requests' uploads until within budget; returns files
        deleted."""
        with self._lock:
            return self._sweep(incoming=0) + self._sweep_outputs(time.time())

    def _sweep(self, incoming: int) -> int:
        """Under the lock: expired uploads go, then answered ones, least recently used first, until the
        budget also holds ``incoming`` more bytes. Updates ``held_bytes``."""
        now = time.time()
        unused: list[tuple[bool, float, str, int]] = []  # (unclaimed, last used, path, bytes)
        total = self._reserved
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
        unused.sort()  # answered ones first, each kind oldest first
        # An incoming upload that would not fit even without every answered one is refused: keep those.
        answered = sum(size for unclaimed, _, _, size in unused if not unclaimed)
        make_room = incoming == 0 or total - answered + incoming <= self.max_bytes
        deleted = 0
        for unclaimed, last, path, size in unused:
            ttl = self.unclaimed_seconds if unclaimed else self.keep_seconds
            expired = now - last >= ttl
            # Never for space one that a queued request needs (unclaimed), nor in vain.
            over = make_room and not unclaimed and total + incoming > self.max_bytes
            if not (expired or over):
                continue
            reason = (f"it was not used for {ttl:g} s" if expired
                      else "its request was answered and newer uploads needed the space")
            if self._delete(path, reason):
                logger.debug("deleted the upload %s: %s", path, reason)
                total -= size
                deleted += 1
        self.held_bytes = total
        return deleted

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

    def _delete(self, path: str, reason: str | None = None) -> bool:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not delete the upload %s: %s", path, err)
            return False
        self._forget(path)
        if reason is not None:
            self._gone[path] = reason
            while len(self._gone) > REMEMBERED_DELETIONS:
                self._gone.popitem(last=False)
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
