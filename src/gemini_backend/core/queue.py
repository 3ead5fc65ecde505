"""The job queue: taskiq with an in-process broker (embedded) or Redis Streams (production).

Jobs carry only a reply id. Redis Streams give at-least-once delivery: a job is acknowledged
after it ran, and one left unacknowledged by a killed worker is claimed again by another. Any
duplicate delivery is harmless because the worker's claim is a conditional UPDATE.
"""

from __future__ import annotations

from taskiq import AsyncBroker, InMemoryBroker
from taskiq_redis import RedisStreamBroker

from gemini_backend.config import Settings

GENERATE_REPLY = "generate_reply"


def create_broker(settings: Settings) -> AsyncBroker:
    if settings.is_production_mode:
        assert settings.redis_url is not None
        return RedisStreamBroker(
            url=settings.redis_url,
            queue_name=f"{settings.redis_key_prefix}:jobs",
            consumer_group_name=f"{settings.redis_key_prefix}:workers",
            # A group created after jobs were queued must still see them.
            consumer_id="0",
            # Jobs of a killed worker are claimed again after this long unacknowledged.
            idle_timeout=settings.reply_stale_seconds * 2 * 1000,
            unacknowledged_lock_timeout=max(5.0, settings.reply_stale_seconds / 2),
            xread_block=1000,
        )
    return InMemoryBroker(max_async_tasks=1000, propagate_exceptions=False)
