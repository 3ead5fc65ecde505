"""Reply streams under many readers: each waiting reader gets exactly the events after its own
position, and on Redis all waiting readers of a process share one connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from gemini_backend.core.streams import MemoryReplyStream, RedisReplyStream, ReplyStream
from tests.conftest import Storage

READERS = 300


@pytest.fixture
async def reply_streams(storage: Storage) -> AsyncIterator[tuple[ReplyStream, Redis | None]]:
    if storage.redis_url is None:
        memory = MemoryReplyStream()
        yield memory, None
        await memory.aclose()
        return
    # A small bounded pool, as the service's own (core/redis.py). 150 readers waiting at once on
    # 8 connections only works because the waiting is one shared read, not one per reader.
    redis = Redis.from_pool(
        BlockingConnectionPool.from_url(storage.redis_url, max_connections=8, timeout=20)
    )
    streams = RedisReplyStream(redis, f"test-streams-{uuid.uuid4().hex}")
    yield streams, redis
    await streams.aclose()
    await redis.aclose()


def _subscribed_waiters(streams: RedisReplyStream) -> int:
    channels = streams._notices._channels.values()
    return sum(len(c.listeners) for c in channels if c.subscribed.is_set())


async def test_many_waiting_readers_each_get_their_own_events(reply_streams):
    streams, _ = reply_streams
    first_ids = {
        reply: await streams.append(reply, "delta", f"first {reply}") for reply in range(READERS)
    }
    # Half wait from the start (they get the first event at once), half after the first event
    # (they wait, and must get only the second).
    readers = [
        asyncio.create_task(streams.read(reply, None if reply % 2 else first_ids[reply], 10_000))
        for reply in range(READERS)
    ]
    if isinstance(streams, RedisReplyStream):
        # Every reader that has to wait is in the shared read before the second events are
        # written (otherwise its first, direct read would get them and prove nothing).
        # Polling a condition (bounded by the test timeout), not sleeping for synchronisation.
        while _subscribed_waiters(streams) < READERS // 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    for reply in range(0, READERS, 2):
        await streams.append(reply, "done", f"second {reply}")
    results = await asyncio.wait_for(asyncio.gather(*readers), 20)
    for reply, events in enumerate(results):
        expected = f"first {reply}" if reply % 2 else f"second {reply}"
        assert [e.data for e in events] == [expected], (reply, events)


async def test_a_quiet_stream_times_out_empty(reply_streams):
    streams, _ = reply_streams
    assert await streams.read(10**9, None, 50) == []
    event_id = await streams.append(10**9, "delta", "late")
    assert [e.id for e in await streams.read(10**9, None, 50)] == [event_id]
