"""Wiring of the reply pipeline for one process: the broker, the registered job, the sweeper.

Embedded mode: the API process runs jobs itself (taskiq's in-process broker) and its sweeper.
Production mode: the API process only enqueues; `gemini-backend worker` processes receive jobs
from Redis Streams and run the sweeper (several sweepers are safe: each stale reply is
re-queued by one conditional UPDATE).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from taskiq import AsyncBroker, InMemoryBroker
from taskiq.decor import AsyncTaskiqDecoratedTask

from gemini_backend.config import Settings
from gemini_backend.core.queue import GENERATE_REPLY
from gemini_backend.worker.replies import ReplyGenerator

log = structlog.get_logger(__name__)


class ReplyPipeline:
    def __init__(self, settings: Settings, broker: AsyncBroker, generator: ReplyGenerator) -> None:
        self.settings = settings
        self.broker = broker
        self.generator = generator
        self._sweeper: asyncio.Task[None] | None = None

        async def generate_reply(reply_id: int) -> None:
            await generator.run(reply_id)

        self._task: AsyncTaskiqDecoratedTask[[int], Any] = broker.register_task(
            generate_reply,
            task_name=GENERATE_REPLY,
        )

    async def enqueue(self, reply_id: int) -> None:
        await self._task.kiq(reply_id)

    async def start(self, *, run_sweeper: bool) -> None:
        await self.broker.startup()
        if run_sweeper:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="reply-sweeper")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if isinstance(self.broker, InMemoryBroker):
            # Embedded mode: let replies in progress finish; the rest are swept at next start.
            try:
                await asyncio.wait_for(self.broker.wait_all(), grace_seconds)
            except TimeoutError:
                log.warning("replies_unfinished_at_shutdown")
        await self.broker.shutdown()

    async def sweep_once(self, *, stale_seconds: float | None = None) -> list[int]:
        return await self.generator.sweep(self.enqueue, stale_seconds=stale_seconds)

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(10.0, self.settings.reply_stale_seconds / 4))
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep_failed")
            await asyncio.sleep(interval)
