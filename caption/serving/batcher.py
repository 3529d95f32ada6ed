"""Requests from many threads, served in batches by one worker thread.

Whatever arrives while the previous batch runs goes into the next one (up to ``max_batch_size``), so N users
at once cost about one forward pass, and the model runs one batch at a time. Each request is judged on its own
before it gets here (a bad value or file never enters a batch), and if running a batch fails anyway, its
requests are run again one by one, so only the request that fails on its own gets the exception.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

logger = logging.getLogger("caption.batcher")

Request = TypeVar("Request")
Result = TypeVar("Result")


class MicroBatcher(Generic[Request, Result]):
    """``batcher(request)`` blocks until ``run([request, ...])`` has produced that request's result."""

    def __init__(
        self, run: Callable[[list[Request]], list[Result]], max_batch_size: int, name: str = "batcher",
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.run = run
        self.max_batch_size = max_batch_size
        self._pending: queue.SimpleQueue[tuple[Request, Future]] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._serve_forever, name=name, daemon=True)
        self._worker.start()

    def __call__(self, request: Request) -> Result:
        return self.submit(request).result()

    def submit(self, request: Request) -> Future:
        """Queue ``request``; its future holds the result (an event loop awaits it without a thread)."""
        future: Future = Future()
        self._pending.put((request, future))
        return future

    def pending(self) -> int:
        """Requests waiting for a batch (not those in the batch running now)."""
        return self._pending.qsize()

    def alive(self) -> bool:
        return self._worker.is_alive()

    def _serve_forever(self) -> None:
        while True:  # no local keeps a served batch: its requests and results are freed while the next waits
            self._serve(self._next_batch())

    def _next_batch(self) -> list[tuple[Request, Future]]:
        batch = [self._pending.get()]
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _serve(self, batch: list[tuple[Request, Future]]) -> None:
        try:
            results = self.run([request for request, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except Exception as err:  # noqa: BLE001 - whatever went wrong is reported to the request that caused it
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            logger.warning("a batch of %d failed (%s); running its requests one by one", len(batch), err)
            for item in batch:
                self._serve([item])
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
