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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, BrokerMessage
from taskiq_redis import RedisStreamBroker

from gemini_backend.config import Settings
from gemini_backend.core.jobs import stream_names
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
        async def _ack() -> None:
            # Acknowledged and deleted in one round trip: the stream holds only the jobs not
            # yet done. The stock broker only acknowledges, and with no length limit (a limit
            # would drop jobs not yet read under a backlog) the stream grew by every job ever
            # queued, for as long as Redis kept it.
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.xack(queue_name, self.consumer_group_name, id)
                pipe.xdel(queue_name, id)
                await pipe.execute()

        return _ack

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
