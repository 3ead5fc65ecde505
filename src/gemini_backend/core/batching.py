"""Group commit: many callers' items written by one statement, with no wait for a lone one.

An item submitted while no batch is in flight goes out at once, alone. Items submitted while a
batch is in flight wait for it and then go out together (at most `max_batch` per batch), so
under load one round trip serves many callers and with none there is no added latency: no
timer, no window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
V = TypeVar("V")


class GroupCommit(Generic[K, T, V]):
    """`flush(items)` runs one batch and returns each item's result by its key (a key missing
    from it gets `missing`). Keys are unique within a batch: an item whose key is already in
    it gets `missing` (a duplicate delivery of a claim must not be told it claimed too). An
    error of a batch is raised to every caller in it."""

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[dict[K, V]]],
        *,
        missing: V,
        max_batch: int = 64,
    ) -> None:
        self._flush = flush
        self._missing = missing
        self._max_batch = max_batch
        self._pending: list[tuple[K, T, asyncio.Future[V]]] = []
        self._running: asyncio.Task[None] | None = None
        self.batches = 0  # batches run and items written (figures for the benchmarks)
        self.items = 0

    async def submit(self, key: K, item: T) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending.append((key, item, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        # A caller cancelled before its batch went out is left out of it; once the batch went
        # out its write happens anyway, as a single statement cut off by a cancel may.
        return await future

    async def _drain(self) -> None:
        while self._pending:
            taken = self._take()
            if not taken:
                continue
            self.batches += 1
            self.items += len(taken)
            try:
                results = await self._flush([item for item, _ in taken.values()])
            except asyncio.CancelledError:
                for _, future in taken.values():
                    future.cancel()
                for _, _, future in self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for _, future in taken.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for key, (_, future) in taken.items():
                if not future.done():
                    future.set_result(results.get(key, self._missing))

    def _take(self) -> dict[K, tuple[T, asyncio.Future[V]]]:
        """The next batch: its callers still waiting, one per key."""
        chunk = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        taken: dict[K, tuple[T, asyncio.Future[V]]] = {}
        for key, item, future in chunk:
            if future.done():
                continue
            if key in taken:
                future.set_result(self._missing)
            else:
                taken[key] = (item, future)
        return taken
