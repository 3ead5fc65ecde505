"""The job queue's listener (production: Redis Streams) stops when it is told to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from taskiq import BrokerMessage

from gemini_backend.config import Settings
from gemini_backend.core.queue import create_broker
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
