"""Group commit (core/batching.py): items that meet go out together, a lone one at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gemini_backend.core.batching import GroupCommit


class Recorder:
    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()
        self.fail_first = fail_first

    async def flush(self, items: Sequence[int]) -> dict[int, str]:
        self.batches.append(list(items))
        self.entered.set()
        await self.release.wait()
        if self.fail_first and len(self.batches) == 1:
            raise RuntimeError("statement failed")
        return {i: f"done {i}" for i in items if i >= 0}


async def test_a_lone_item_goes_at_once() -> None:
    recorder = Recorder()
    batcher: GroupCommit[int, int, str | None] = GroupCommit(recorder.flush, missing=None)
    assert await batcher.submit(1, 1) == "done 1"
    assert recorder.batches == [[1]]


async def test_items_arriving_while_a_batch_is_in_flight_go_out_together() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher: GroupCommit[int, int, str | None] = GroupCommit(
        recorder.flush, missing=None, max_batch=3
    )
    first = asyncio.create_task(batcher.submit(0, 0))
    await recorder.entered.wait()  # the first batch is out, waiting
    assert recorder.batches == [[0]]
    later = [asyncio.create_task(batcher.submit(i, i)) for i in range(1, 6)]
    recorder.release.set()
    results = await asyncio.gather(first, *later)
    assert results == [f"done {i}" for i in range(6)]
    assert recorder.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_batch each


async def test_an_item_the_flush_leaves_out_gets_the_missing_value() -> None:
    batcher: GroupCommit[int, int, str | None] = GroupCommit(Recorder().flush, missing=None)
    assert await batcher.submit(-1, -1) is None


async def test_a_duplicate_key_in_a_batch_gets_the_missing_value() -> None:
    """Two deliveries of one job meeting in a batch: only one may be told it claimed."""
    recorder = Recorder()
    batcher: GroupCommit[int, int, str | None] = GroupCommit(recorder.flush, missing=None)
    results = await asyncio.gather(batcher.submit(7, 7), batcher.submit(7, 7))
    assert results.count("done 7") == 1
    assert results.count(None) == 1
    assert recorder.batches == [[7]]


async def test_an_error_reaches_every_caller_of_its_batch_and_no_other() -> None:
    recorder = Recorder(fail_first=True)
    recorder.release.clear()
    batcher: GroupCommit[int, int, str | None] = GroupCommit(recorder.flush, missing=None)
    first = asyncio.create_task(batcher.submit(1, 1))
    await recorder.entered.wait()
    second = asyncio.create_task(batcher.submit(2, 2))
    recorder.release.set()
    with pytest.raises(RuntimeError):
        await first
    assert await second == "done 2"


async def test_a_caller_cancelled_before_its_batch_is_left_out() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher: GroupCommit[int, int, str | None] = GroupCommit(recorder.flush, missing=None)
    first = asyncio.create_task(batcher.submit(1, 1))
    await recorder.entered.wait()
    gone = asyncio.create_task(batcher.submit(2, 2))
    kept = asyncio.create_task(batcher.submit(3, 3))
    await asyncio.sleep(0)  # both have submitted (one step of the loop, not a wait for time)
    gone.cancel()
    recorder.release.set()
    assert await first == "done 1"
    assert await kept == "done 3"
    assert recorder.batches == [[1], [3]]
