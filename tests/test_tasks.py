"""Background tasks are stopped for certain, even when one swallows a cancel (core/tasks.py)."""

from __future__ import annotations

import asyncio
import contextlib

from gemini_backend.core.tasks import cancel_and_wait


async def test_a_task_that_swallowed_a_cancel_is_cancelled_again() -> None:
    started = asyncio.Event()

    async def swallows_one() -> None:
        started.set()
        # A cancel lost inside a library call: the task carries on.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    task = asyncio.create_task(swallows_one())
    await started.wait()
    await asyncio.wait_for(cancel_and_wait(task), 10)
    assert task.cancelled()


async def test_a_task_that_ignores_every_cancel_is_given_up_on() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    cancels = 0

    async def ignores_all() -> None:
        nonlocal cancels
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels += 1

    task = asyncio.create_task(ignores_all())
    await started.wait()
    await asyncio.wait_for(cancel_and_wait(task, give_up_after=0.3), 10)
    assert not task.done()
    assert cancels >= 2  # cancelled again, not only once
    release.set()
    await task


async def test_a_task_that_ended_is_left_as_it_is() -> None:
    async def fails() -> None:
        raise ValueError("its own outcome")

    task = asyncio.create_task(fails())
    await asyncio.wait({task})
    await cancel_and_wait(task)  # not raised here
    assert isinstance(task.exception(), ValueError)
