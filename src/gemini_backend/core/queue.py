"""The job queue's reading side in `gemini-backend worker`: taskiq-redis' Redis Streams broker.

Only worker processes import this module (and taskiq with it); the API enqueues with
core/jobs.py, which writes the entries this broker reads, and embedded mode runs its jobs as
tasks of its own (worker/runtime.py). Jobs carry only a reply id. Redis Streams give
at-least-once delivery: a job is acknowledged after it ran, and one left unacknowledged by a
killed worker is claimed again by another. Any duplicate delivery is harmless because the
worker's claim is a conditional UPDATE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, BrokerMessage, Context, TaskiqDepends
from taskiq_redis import RedisStreamBroker

from gemini_backend.config import Settings
from gemini_backend.core.jobs import GENERATE_REPLY, stream_names
from gemini_backend.core.streams import FinalCommands
from gemini_backend.core.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


class ResilientRedisStreamBroker(RedisStreamBroker):
    """taskiq-redis' stream broker, kept listening through a Redis outage.

    The stock `listen` ends (and with it the worker) on the first connection error. Here the
    worker waits, with backoff, for Redis to come back, declares the consumer group again (a
    restarted Redis without persistence lost it, and the jobs with it: the sweeper re-enqueues
    those from the database) and goes on.
    """

    _client: Redis | None = None

    def _redis(self) -> Redis:
        # One client over the broker's pool, instead of the stock broker's new client per
        # enqueue and per acknowledgement (a measurable share of a send's CPU).
        if self._client is None:
            self._client = Redis(connection_pool=self.connection_pool)
        return self._client

    async def kick(self, message: BrokerMessage) -> None:
        queue_name = message.labels.get("queue_name") or self.queue_name
        fields: Any = {b"data": message.message}
        await self._redis().xadd(
            queue_name, fields, maxlen=self.maxlen, approximate=self.approximate
        )

    def _ack_generator(self, id: str, queue_name: str) -> Callable[[], Awaitable[None]]:
        return JobAck(self, queue_name, id)

    async def _read_jobs(self) -> AsyncGenerator[AckableMessage, None]:
        """The stock listener's reads, with its reclaim of jobs left unacknowledged by a dead
        worker (`XAUTOCLAIM`) made at most every quarter of `idle_timeout` instead of after
        every read: a pipeline round trip per read, when jobs arrive one or two at a time, was
        a share of each reply's Redis traffic. A job is only reclaimed once idle that long, so
        the reclaim comes at most a quarter later; the sweeper re-queues such replies anyway."""
        redis = self._redis()
        interval = self.idle_timeout / 4000
        next_reclaim = 0.0  # the first read is followed by a reclaim, as the stock listener's
        while True:
            fetched: Any = await redis.xreadgroup(  # redis-py's types are loose here
                self.consumer_group_name,
                self.consumer_name,
                {self.queue_name: ">"},
                block=self.block,
                noack=False,
                count=self.count,
            )
            for stream, entries in fetched or []:
                for entry_id, fields in entries:
                    yield self._job(stream, entry_id, fields)
            now = asyncio.get_running_loop().time()
            if now < next_reclaim:
                continue
            next_reclaim = now + interval
            claimed: Any = await redis.xautoclaim(
                self.queue_name,
                self.consumer_group_name,
                self.consumer_name,
                min_idle_time=self.idle_timeout,
                count=self.unacknowledged_batch_size,
            )
            for entry_id, fields in claimed[1]:  # [next start, entries, deleted ids]
                yield self._job(self.queue_name, entry_id, fields)

    def _job(self, queue_name: Any, entry_id: Any, fields: Any) -> AckableMessage:
        """A stream entry as a job, acknowledged (and deleted) once it ran."""
        return AckableMessage(
            data=fields[b"data"], ack=self._ack_generator(id=entry_id, queue_name=queue_name)
        )

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        delay = 0.5
        while True:
            try:
                async for message in _cancellable(self._read_jobs()):
                    delay = 0.5
                    yield message
            except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" not in str(exc):
                    raise
                log.warning("queue_unavailable", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self._declare_consumer_group()
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    continue
                log.info("queue_reconnected")


class JobAck:
    """A job's acknowledgement: acknowledged and deleted in one round trip, so the stream holds
    only the jobs not yet done (the stock broker only acknowledges, and with no length limit,
    which would drop jobs not yet read under a backlog, the stream grew by every job ever
    queued). The job may send it first in a round trip of its own (`into`): the receiver's
    call afterwards then costs nothing."""

    __slots__ = ("_broker", "_id", "_queue_name", "_sent")

    def __init__(self, broker: ResilientRedisStreamBroker, queue_name: Any, id: Any) -> None:
        self._broker = broker
        self._queue_name = queue_name
        self._id = id
        self._sent = False

    def into(self, pipe: Pipeline) -> None:
        """Add the acknowledgement to `pipe`; call `sent` once it executed."""
        pipe.xack(self._queue_name, self._broker.consumer_group_name, self._id)
        pipe.xdel(self._queue_name, self._id)

    def sent(self) -> None:
        self._sent = True

    async def __call__(self) -> None:
        if self._sent:
            return
        async with self._broker._redis().pipeline(transaction=False) as pipe:
            self.into(pipe)
            await pipe.execute()
        self._sent = True


def job_ack(context: Any) -> JobAck | None:
    """The acknowledgement of the job a taskiq `Context` belongs to, when it is a JobAck (None
    otherwise: the receiver acknowledges it as usual). taskiq keeps the message's
    acknowledgement in its private AckController; read defensively, so that a taskiq that
    moved it costs the round trip saved, never a job left unacknowledged."""
    controller = getattr(context, "_ack_controller", None)
    ack = getattr(controller, "_ack", None)
    return ack if isinstance(ack, JobAck) else None


RunReply = Callable[[int, FinalCommands | None], Awaitable[None]]


def register_reply_job(broker: ResilientRedisStreamBroker, run: RunReply) -> None:
    """The reply job, as the workers receive it: `run(reply_id, final_commands)`."""

    async def generate_reply(reply_id: int, context: Context = TaskiqDepends()) -> None:
        # The job's acknowledgement goes with the reply's final event, in its round trip; the
        # receiver's own acknowledgement after the job is then a no-op. A reply that ends
        # without a final event (nothing to claim, taken over) is acknowledged by the receiver
        # as before. Either way after the reply's outcome is committed.
        ack = job_ack(context)
        if ack is None:
            await run(reply_id, None)
            return
        sent: list[bool] = []

        def final_commands(pipe: Any) -> None:
            ack.into(pipe)
            sent.append(True)

        await run(reply_id, final_commands)
        if sent:
            ack.sent()  # the final append executed (it raises otherwise)

    broker.register_task(generate_reply, task_name=GENERATE_REPLY)


async def _cancellable(
    messages: AsyncGenerator[AckableMessage, None],
) -> AsyncGenerator[AckableMessage, None]:
    """The listener, cancellable at any point.

    taskiq stops a worker by cancelling the listener's pending read once, then waits for it.
    A cancel that landed while the stock listener was sending its XAUTOCLAIM pipeline was lost
    (redis-py 8.1 / taskiq-redis 1.2), and the listener went back to a blocking XREADGROUP
    that only a new job ended: the worker's stop then waited for its whole timeout. Here each
    read is a task of its own, cancelled again until it is done. A job read meanwhile is not
    acknowledged, so it is delivered again (and the sweeper re-queues its reply anyway).
    """
    try:
        while True:
            step = asyncio.ensure_future(anext(messages))
            try:
                await asyncio.wait({step})
            except asyncio.CancelledError:
                await cancel_and_wait(step)
                raise
            try:
                message = step.result()
            except StopAsyncIteration:
                return
            yield message
    finally:
        await messages.aclose()


def create_broker(settings: Settings) -> ResilientRedisStreamBroker:
    """The workers' broker (production mode), on the stream core/jobs.py writes to."""
    assert settings.redis_url is not None
    queue_name, group = stream_names(settings)
    return ResilientRedisStreamBroker(
        url=settings.redis_url,
        queue_name=queue_name,
        consumer_group_name=group,
        # A group created after jobs were queued must still see them.
        consumer_id="0",
        # Jobs of a killed worker are claimed again after this long unacknowledged.
        idle_timeout=settings.reply_stale_seconds * 2 * 1000,
        unacknowledged_lock_timeout=max(5.0, settings.reply_stale_seconds / 2),
        xread_block=1000,
        # Passed to redis-py: a silent Redis fails an enqueue instead of hanging it.
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=min(5.0, settings.redis_socket_timeout_seconds),
    )
