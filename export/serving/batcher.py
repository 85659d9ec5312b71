"""Dynamic batching: concurrent requests gathered into one onnxruntime call.

One asyncio task per model forms batches. A batch closes when it holds ``max_batch`` items or
when its oldest item has waited ``max_wait_ms`` (the queue-delay rule of Triton's dynamic
batcher), or at once when no other request is on its way (see ``upstream``). It then runs in a thread pool while the event loop goes on accepting requests; at
most ``slots`` batches run at once, shared by all models, so the pool's size is the number of
concurrent onnxruntime calls. Items are taken from a bounded deque only by the batcher task,
which never awaits while holding one, so a timeout can never lose a request.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captum_vit.export.serving.config import ServeError

RunBatch = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, ...]]
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gather single inputs ``(C, H, W)`` into batches for ``run_batch``.

    Parameters
    ----------
    run_batch : callable
        ``(B, C, H, W)`` array -> list of arrays with leading dimension ``B``; called in ``executor``.
    executor : concurrent.futures.Executor
        Where ``run_batch`` runs.
    slots : asyncio.Semaphore
        Batches allowed in flight at once (shared between the batchers of one service).
    max_batch, max_wait_ms, max_queue : int, float, int
        See :class:`captum_vit.export.serving.ServeConfig`.
    retry_after_s : int
        ``Retry-After`` of the 503 answered when the queue is full.
    on_batch : callable, optional
        Called with ``(batch_size, seconds)`` after each onnxruntime call (metrics).
    upstream : callable, optional
        How many requests for this model are being read or decoded, i.e. will be submitted
        soon. When it is 0 and the queue is empty, waiting cannot fill the batch, so it runs
        at once: a lone request does not pay ``max_wait_ms``.

    Examples
    --------
    >>> import asyncio, concurrent.futures
    >>> async def demo():
    ...     pool = concurrent.futures.ThreadPoolExecutor(1)
    ...     sizes = []
    ...     b = DynamicBatcher(lambda x: [x.sum(axis=(1, 2, 3))], pool, asyncio.Semaphore(1),
    ...                        max_batch=8, max_wait_ms=50, max_queue=16,
    ...                        on_batch=lambda n, s: sizes.append(n))
    ...     b.start()
    ...     outs = await asyncio.gather(*(b.submit(np.full((1, 2, 2), i, np.float32)) for i in range(5)))
    ...     await b.close()
    ...     pool.shutdown()
    ...     return [float(o[0]) for o in outs], sizes
    >>> asyncio.run(demo())
    ([0.0, 4.0, 8.0, 12.0, 16.0], [5])
    """

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        slots: asyncio.Semaphore,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        retry_after_s: int = 1,
        on_batch: Callable[[int, float], Any] | None = None,
        upstream: Callable[[], int] | None = None,
    ) -> None:
        self.run_batch, self.executor, self.slots = run_batch, executor, slots
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue, self.retry_after_s, self.on_batch = max_queue, retry_after_s, on_batch
        self.upstream = upstream
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._form_batches())

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Queue one input; return its row of every output.

        Raises
        ------
        ServeError
            503 ``queue_full`` (with ``Retry-After``) when ``max_queue`` requests already wait,
            503 ``shutting_down`` once :meth:`close` has begun.
        """
        retry = {"Retry-After": str(self.retry_after_s)}
        if self._closing or self._task is None:
            raise ServeError(503, "shutting_down", "the service is shutting down", retry)
        if len(self._queue) >= self.max_queue:
            raise ServeError(503, "queue_full", f"{self.max_queue} requests are already queued; retry later", retry)
        item = _Item(x, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._arrived.set()
        return await item.future

    async def close(self) -> None:
        """Finish every queued and running batch, then stop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)

    async def _form_batches(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self.slots.acquire()
            items = await self._gather()
            if not items:
                self.slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[_Item]:
        items: list[_Item] = []
        while len(items) < self.max_batch:
            if self._queue:
                item = self._queue.popleft()
                if not item.future.done():  # a caller that went away is skipped
                    items.append(item)
                continue
            if not items:
                return items
            remaining = items[0].enqueued + self.max_wait - time.monotonic()
            if remaining <= 0 or self._closing or (self.upstream is not None and self.upstream() == 0):
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return items

    async def _execute(self, items: list[_Item]) -> None:
        try:
            results = await self._results(items)
        finally:
            self.slots.release()
        for item, result in zip(items, results):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    async def _results(self, items: list[_Item]) -> list[tuple[np.ndarray, ...] | BaseException]:
        loop = asyncio.get_running_loop()
        try:
            outs = await loop.run_in_executor(self.executor, self._timed_run, np.stack([i.x for i in items]))
            return [tuple(np.array(o[k]) for o in outs) for k in range(len(items))]
        except Exception as e:
            if len(items) == 1:
                return [e]
        # One bad input must not fail the others: run each alone.
        results: list[tuple[np.ndarray, ...] | BaseException] = []
        for item in items:
            try:
                outs = await loop.run_in_executor(self.executor, self._timed_run, item.x[None])
                results.append(tuple(np.array(o[0]) for o in outs))
            except Exception as e:
                results.append(e)
        return results

    def _timed_run(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        start = time.perf_counter()
        outs = self.run_batch(batch)
        if self.on_batch is not None:
            self.on_batch(int(batch.shape[0]), time.perf_counter() - start)
        return outs
