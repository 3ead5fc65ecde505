"""Wiring of the reply pipeline for one process: the broker, the registered job, the sweeper.

Embedded mode: the API process runs jobs itself (taskiq's in-process broker) and its sweeper.
Production mode: the API process only enqueues; `gemini-backend worker` processes receive jobs
from Redis Streams and run the sweeper (several sweepers are safe: each stale reply is
re-queued by one conditional UPDATE).

The two are two classes, ReplyPipeline and StreamReplyPipeline; services.py picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import Any

import structlog
from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends
from taskiq.decor import AsyncTaskiqDecoratedTask

from gemini_backend.chat.generation import ReplyGenerator
from gemini_backend.config import Settings
from gemini_backend.core.queue import GENERATE_REPLY, ResilientRedisStreamBroker, job_ack
from gemini_backend.core.tasks import cancel_and_wait
from gemini_backend.worker.housekeeping import Housekeeping

log = structlog.get_logger(__name__)

# A reply's `updated_at` is set before its send commits; its job's stream id after. A reply
# queued later than this before the oldest waiting job may be that job's (or a later one's).
ENQUEUE_MARGIN = timedelta(seconds=1)


class ReplyPipeline:
    """What both modes share; InProcessReplyPipeline and StreamReplyPipeline differ in the
    broker and in what it takes to stop and to sweep."""

    queues_on_redis = False  # whether `core.queue.kicks_into` applies to its jobs

    def __init__(
        self,
        settings: Settings,
        broker: AsyncBroker,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.generator = generator
        self.housekeeping = housekeeping  # purged every PURGE_INTERVAL_SECONDS by the sweeper
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_sweeping = asyncio.Event()

        async def generate_reply(reply_id: int, context: Context = TaskiqDepends()) -> None:
            # The job's acknowledgement goes with the reply's final event, in its round trip;
            # the receiver's own acknowledgement after the job is then a no-op. A reply that
            # ends without a final event (nothing to claim, taken over) is acknowledged by the
            # receiver as before. Either way after the reply's outcome is committed.
            ack = job_ack(context)
            if ack is None:
                await generator.run(reply_id)
                return

            def final_commands(pipe: Any) -> None:
                ack.into(pipe)
                sent.append(True)

            sent: list[bool] = []
            await generator.run(reply_id, final_commands)
            if sent:
                ack.sent()  # the final append executed (it raises otherwise)

        self._task: AsyncTaskiqDecoratedTask[[int], Any] = broker.register_task(
            generate_reply,
            task_name=GENERATE_REPLY,
        )

    async def enqueue(self, reply_id: int) -> None:
        await self._task.kiq(reply_id)

    async def start(self, *, run_sweeper: bool) -> None:
        await self.broker.startup()
        if run_sweeper:
            self._stop_sweeping.clear()
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="reply-sweeper")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self._sweeper is not None:
            # Asked to stop between sweeps, not cancelled in one: a cancel landing in a
            # database call invalidates its connection, and a second one during that
            # connection's close (SQLAlchemy's shielded graceful close, then aiosqlite's stop)
            # left a close task that never ended, which hung the event loop's close.
            self._stop_sweeping.set()
            await asyncio.wait({self._sweeper}, timeout=grace_seconds)
            await cancel_and_wait(self._sweeper, give_up_after=grace_seconds)  # only if stuck
        await self._finish_running(grace_seconds)
        await self.broker.shutdown()

    async def _finish_running(self, grace_seconds: float) -> None:
        """Before the broker shuts down."""

    async def _queued_before(self) -> datetime | None:
        """Replies queued before this may have lost their job (None: any may have)."""
        return None

    async def sweep_once(self, *, stale_seconds: float | None = None) -> list[int]:
        queued_before = await self._queued_before()
        return await self.generator.sweep(
            self.enqueue, stale_seconds=stale_seconds, queued_before=queued_before
        )

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(10.0, self.settings.reply_stale_seconds / 4))
        purge_at = time.monotonic()  # the first round purges too
        while not self._stop_sweeping.is_set():
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep_failed")
            if self.housekeeping is not None and time.monotonic() >= purge_at:
                purge_at = time.monotonic() + self.settings.purge_interval_seconds
                try:
                    await self.housekeeping.purge(self._stop_sweeping)
                except Exception:
                    log.exception("purge_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_sweeping.wait(), interval)


class InProcessReplyPipeline(ReplyPipeline):
    """Embedded mode: taskiq's in-process broker; this process runs the jobs it enqueues."""

    def __init__(
        self,
        settings: Settings,
        broker: InMemoryBroker,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        super().__init__(settings, broker, generator, housekeeping)
        self._in_process = broker

    async def _finish_running(self, grace_seconds: float) -> None:
        # Let replies in progress finish; the rest are swept at next start.
        try:
            await asyncio.wait_for(self._in_process.wait_all(), grace_seconds)
        except TimeoutError:
            log.warning("replies_unfinished_at_shutdown")


class StreamReplyPipeline(ReplyPipeline):
    """Production mode: jobs go to Redis Streams, received by `gemini-backend worker` (whose
    receiver lets running replies finish)."""

    queues_on_redis = True

    def __init__(
        self,
        settings: Settings,
        broker: ResilientRedisStreamBroker,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        super().__init__(settings, broker, generator, housekeeping)
        self._stream = broker

    async def _queued_before(self) -> datetime | None:
        # A queued reply whose job still waits in the stream is not stuck, only behind a
        # backlog: queuing it again would add a second job for it, and under a backlog older
        # than REPLY_STALE_SECONDS the sweeper would double the queue it is behind. Only
        # replies queued before the oldest waiting job (with a margin for the time between a
        # send's commit and its enqueue) can have lost theirs.
        waiting_since = await self._stream.waiting_since()
        return None if waiting_since is None else waiting_since - ENQUEUE_MARGIN
