"""The job queue on Redis Streams: the listener stops when it is told to, reclaims and
deletes jobs; the API's enqueue writes what taskiq's workers read."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.commands.core import StreamCommands
from taskiq import BrokerMessage

from gemini_backend.config import Settings
from gemini_backend.core.jobs import GENERATE_REPLY, RedisJobQueue
from gemini_backend.core.queue import create_broker
from gemini_backend.core.redis import create_redis
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "production", reason="the Redis Streams broker")


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.001, 0.005, 0.05])
async def test_a_read_cancelled_at_any_point_ends_at_once(
    make_settings: Callable[..., Settings], delay: float
) -> None:
    """taskiq stops a worker by cancelling the listener's pending read once. Right after a job
    was read, the stock listener sends its XAUTOCLAIM pipeline, and a cancel landing there used
    to be lost: the read then went on blocking until the next job (a worker's stop waited its
    whole timeout). The delays put the cancel inside that pipeline and after it."""
    settings = make_settings(redis_key_prefix=f"gbtest:{uuid.uuid4().hex[:12]}")
    broker: Any = create_broker(settings)
    await broker.startup()
    try:
        messages = broker.listen()
        await broker.kick(BrokerMessage(task_id="1", task_name="t", message=b"job", labels={}))
        first = await asyncio.wait_for(anext(messages), 10)
        assert first.data == b"job"
        await first.ack()
        pending = asyncio.ensure_future(anext(messages))
        await asyncio.sleep(delay)
        pending.cancel()
        done, _ = await asyncio.wait({pending}, timeout=2)
        assert done == {pending}, "the cancelled read did not end"
        assert pending.cancelled()
        await messages.aclose()
    finally:
        await broker.shutdown()


async def test_a_job_a_dead_worker_left_unacknowledged_is_reclaimed_once_idle(
    make_settings: Callable[..., Settings],
) -> None:
    """A job read by a worker that died before acknowledging it goes to another worker once it
    was idle for `idle_timeout` (twice REPLY_STALE_SECONDS), without any new job arriving."""
    settings = make_settings(
        redis_key_prefix=f"gbtest:{uuid.uuid4().hex[:12]}", reply_stale_seconds=1
    )
    dead: Any = create_broker(settings)
    live: Any = create_broker(settings)
    await dead.startup()
    await live.startup()
    try:
        await dead.kick(BrokerMessage(task_id="1", task_name="t", message=b"orphan", labels={}))
        dead_reads = dead.listen()
        taken = await asyncio.wait_for(anext(dead_reads), 10)  # read, never acknowledged
        assert taken.data == b"orphan"
        await dead_reads.aclose()
        live_reads = live.listen()
        reclaimed = await asyncio.wait_for(anext(live_reads), 20)
        assert reclaimed.data == b"orphan"
        await reclaimed.ack()
        await live_reads.aclose()
        pending: Any = await live._redis().xpending(live.queue_name, live.consumer_group_name)
        assert pending["pending"] == 0
    finally:
        await dead.shutdown()
        await live.shutdown()


async def test_reads_do_not_each_reclaim(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reclaim (`XAUTOCLAIM`) runs at most every quarter of `idle_timeout`, not after every
    read: jobs arriving one at a time cost one Redis round trip each to read."""
    settings = make_settings(redis_key_prefix=f"gbtest:{uuid.uuid4().hex[:12]}")
    broker: Any = create_broker(settings)
    reclaims: list[str] = []
    original = StreamCommands.xautoclaim

    def counted(self: Any, name: Any, *args: Any, **kwargs: Any) -> Any:
        if name == broker.queue_name:  # any client, pipeline or not
            reclaims.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(StreamCommands, "xautoclaim", counted)
    await broker.startup()
    try:
        reads = broker.listen()
        for i in range(10):  # each job read alone
            await broker.kick(BrokerMessage(task_id=str(i), task_name="t", message=b"j", labels={}))
            job = await asyncio.wait_for(anext(reads), 10)
            await job.ack()
        await reads.aclose()
        assert len(reclaims) <= 1  # idle_timeout is 120 s here: one reclaim, after the first read
    finally:
        await broker.shutdown()


async def test_the_stream_keeps_only_jobs_not_yet_done(
    make_settings: Callable[..., Settings],
) -> None:
    """An acknowledged job is deleted from the stream (the stock broker kept every job ever
    queued); one read but not acknowledged stays, for another worker to reclaim."""
    settings = make_settings(redis_key_prefix=f"gbtest:{uuid.uuid4().hex[:12]}")
    broker: Any = create_broker(settings)
    await broker.startup()
    try:
        for i in range(3):
            await broker.kick(BrokerMessage(task_id=str(i), task_name="t", message=b"j", labels={}))
        reads = broker.listen()
        jobs = [await asyncio.wait_for(anext(reads), 10) for _ in range(3)]
        await reads.aclose()
        for job in jobs[:2]:
            await job.ack()
        assert await broker._redis().xlen(broker.queue_name) == 1
        pending: Any = await broker._redis().xpending(broker.queue_name, broker.consumer_group_name)
        assert pending["pending"] == 1
    finally:
        await broker.shutdown()


async def test_a_job_the_api_enqueues_is_the_message_taskiq_would_send(
    make_settings: Callable[..., Settings],
) -> None:
    """The API writes jobs without taskiq (core/jobs.py); the workers' broker reads them, and
    taskiq's receiver parses them, as the messages taskiq's own kick would have written."""
    settings = make_settings(redis_key_prefix=f"gbtest:{uuid.uuid4().hex[:12]}")
    broker: Any = create_broker(settings)

    async def generate_reply(reply_id: int) -> None:
        pass

    task = broker.register_task(generate_reply, task_name=GENERATE_REPLY)
    redis = create_redis(settings)
    assert redis is not None
    jobs = RedisJobQueue(redis, settings)
    await jobs.declare_group()
    await broker.startup()
    try:
        await jobs.enqueue(42)
        reads = broker.listen()
        job = await asyncio.wait_for(anext(reads), 10)
        await job.ack()
        await reads.aclose()
        ours = broker.formatter.loads(job.data)
        theirs = broker.formatter.loads(
            broker.formatter.dumps(task.kicker()._prepare_message(42)).message
        )
        assert ours.model_dump(exclude={"task_id"}) == theirs.model_dump(exclude={"task_id"})
        assert (ours.task_name, ours.args) == (GENERATE_REPLY, [42])
        assert len(ours.task_id) == len(theirs.task_id) == 32
        assert await redis.xlen(jobs.stream) == 0  # acknowledged and deleted, as the broker's
    finally:
        await broker.shutdown()
        await redis.aclose()
