"""Stopping background tasks for certain."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def cancel_and_wait(task: asyncio.Future[Any], *, give_up_after: float | None = None) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every 50 ms.

    redis-py (8.1) can lose a cancel that lands inside some of its commands (a pipeline, a
    Pub/Sub read): the task then goes on as if nothing happened, and a shutdown that waits for
    it waits forever. With `give_up_after`, a task still running that long after the first
    cancel is left behind (logged) rather than waited on further. The task's own outcome
    (its result, its exception, its cancellation) is not raised here.
    """
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    while not task.done():
        if deadline is not None and loop.time() >= deadline:
            log.warning("task_did_not_stop", task=getattr(task, "get_name", lambda: "?")())
            return
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at collection
