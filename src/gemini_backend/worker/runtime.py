"""Wiring of the reply pipeline for one process: the broker, the registered job, the sweeper.

Embedded mode: the API process runs jobs itself (each an asyncio task of its own) and its
sweeper. Production mode: the API process only enqueues (core/jobs.py, an `XADD`);
`gemini-backend worker` processes receive jobs from Redis Streams through taskiq-redis' broker
(core/queue.py) and run the sweeper (several sweepers are safe: each stale reply is re-queued by
one conditional UPDATE). Neither API process imports taskiq: its package alone took about a
second of a cold start on a loaded machine (bench/README.md).

The two are two classes, ReplyPipeline and StreamReplyPipeline; services.py picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from gemini_backend.chat.generation import ReplyGenerator
from gemini_backend.config import Settings
from gemini_backend.core.jobs import RedisJobQueue
from gemini_backend.core.tasks import cancel_and_wait
from gemini_backend.worker.housekeeping import Housekeeping

if TYPE_CHECKING:
    from gemini_backend.core.queue import ResilientRedisStreamBroker

log = structlog.get_logger(__name__)

# A reply's `updated_at` is set before its send commits; its job's stream id after. A reply
# queued later than this before the oldest waiting job may be that job's (or a later one's).
ENQUEUE_MARGIN = timedelta(seconds=1)
FIRST_PURGE_AFTER = 60.0  # seconds after a start, at most


class ReplyPipeline:
    """What both modes share; InProcessReplyPipeline and StreamReplyPipeline differ in how a
    job is queued and run, and in what it takes to stop and to sweep."""

    queues_on_redis = False  # whether `core.jobs.kicks_into` applies to its jobs

    def __init__(
        self,
        settings: Settings,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.housekeeping = housekeeping  # purged every PURGE_INTERVAL_SECONDS by the sweeper
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_sweeping = asyncio.Event()

    async def enqueue(self, reply_id: int) -> None:
        raise NotImplementedError

    async def _start_queue(self) -> None:
        """Before the sweeper starts."""

    async def _stop_queue(self) -> None:
        """Last, after the replies in progress had their grace."""

    async def start(self, *, run_sweeper: bool) -> None:
        await self._start_queue()
        if run_sweeper:
            self._stop_sweeping.clear()
            # The first round before the process takes any job: what a stopped one left.
            await self._sweep_round()
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
        await self._stop_queue()

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

    async def _sweep_round(self) -> None:
        try:
            await self.sweep_once()
        except Exception:
            log.exception("sweep_failed")

    async def _sweep_forever(self) -> None:
        """After `start`'s first sweep: a sweep every interval until stopped, and a purge every
        PURGE_INTERVAL_SECONDS, the first one at most a minute after the start (not during it,
        when the process has its first requests and the stuck replies to deal with)."""
        interval = max(1.0, min(10.0, self.settings.reply_stale_seconds / 4))
        purge_at = time.monotonic() + min(self.settings.purge_interval_seconds, FIRST_PURGE_AFTER)
        while True:
            if self.housekeeping is not None and time.monotonic() >= purge_at:
                purge_at = time.monotonic() + self.settings.purge_interval_seconds
                try:
                    await self.housekeeping.purge(self._stop_sweeping)
                except Exception:
                    log.exception("purge_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_sweeping.wait(), interval)
            if self._stop_sweeping.is_set():
                return
            await self._sweep_round()


class InProcessReplyPipeline(ReplyPipeline):
    """Embedded mode: this process runs the jobs it enqueues, each as a task of its own."""

    def __init__(
        self,
        settings: Settings,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        super().__init__(settings, generator, housekeeping)
        self._running: set[asyncio.Task[None]] = set()

    async def enqueue(self, reply_id: int) -> None:
        task = asyncio.create_task(self._generate(reply_id), name=f"reply-{reply_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _generate(self, reply_id: int) -> None:
        try:
            await self.generator.run(reply_id)
        except Exception:
            # As a queue worker would: logged, and the reply is the sweeper's.
            log.exception("reply_job_failed", reply_id=reply_id)

    async def _finish_running(self, grace_seconds: float) -> None:
        # Let replies in progress finish; the rest are swept at next start.
        if not self._running:
            return
        _, unfinished = await asyncio.wait(set(self._running), timeout=grace_seconds)
        if unfinished:
            log.warning("replies_unfinished_at_shutdown", replies=len(unfinished))


class StreamReplyPipeline(ReplyPipeline):
    """Production mode: jobs go to Redis Streams (core/jobs.py), received by
    `gemini-backend worker` through `receiving_broker` (whose receiver lets running replies
    finish)."""

    queues_on_redis = True

    def __init__(
        self,
        settings: Settings,
        jobs: RedisJobQueue,
        generator: ReplyGenerator,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        super().__init__(settings, generator, housekeeping)
        self.jobs = jobs
        self.broker: ResilientRedisStreamBroker | None = None  # a worker's, once it receives

    def receiving_broker(self) -> ResilientRedisStreamBroker:
        """The worker's broker, with the reply job registered (taskiq is imported here: only
        worker processes receive)."""
        from gemini_backend.core.queue import create_broker, register_reply_job

        broker = create_broker(self.settings)
        generator = self.generator

        register_reply_job(broker, generator.run)
        self.broker = broker
        return broker

    async def enqueue(self, reply_id: int) -> None:
        await self.jobs.enqueue(reply_id)

    async def _start_queue(self) -> None:
        await self.jobs.declare_group()
        if self.broker is not None:
            await self.broker.startup()

    async def _stop_queue(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()

    async def _queued_before(self) -> datetime | None:
        # A queued reply whose job still waits in the stream is not stuck, only behind a
        # backlog: queuing it again would add a second job for it, and under a backlog older
        # than REPLY_STALE_SECONDS the sweeper would double the queue it is behind. Only
        # replies queued before the oldest waiting job (with a margin for the time between a
        # send's commit and its enqueue) can have lost theirs.
        waiting_since = await self.jobs.waiting_since()
        return None if waiting_since is None else waiting_since - ENQUEUE_MARGIN
