"""The shared Redis client of a process (production mode only)."""

from __future__ import annotations

from redis.asyncio import Redis

from gemini_backend.config import Settings


def create_redis(settings: Settings) -> Redis | None:
    if not settings.redis_url:
        return None
    return Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
    )
