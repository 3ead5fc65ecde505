"""The shared Redis client of a process (production mode only)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from gemini_backend.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def create_redis(settings: Settings) -> Redis | None:
    """A client on a bounded pool: when every connection is busy a command waits for one
    (redis-py's default pool fails at once with MaxConnectionsError instead)."""
    if not settings.redis_url:
        return None
    # Imported here: an embedded process never loads redis-py (a third of its start-up imports).
    import redis
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.driver_info import DriverInfo

    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        decode_responses=False,
        socket_connect_timeout=min(5.0, settings.redis_socket_timeout_seconds),
        socket_timeout=settings.redis_socket_timeout_seconds,
        health_check_interval=30,
        # Named once: by default every new connection reads redis-py's version from its
        # installed metadata (a scan of sys.path, about 0.4 ms).
        driver_info=DriverInfo(name="redis-py", lib_version=redis.__version__),
    )
    return Redis.from_pool(pool)  # closing the client closes the pool


def as_text(value: bytes | str) -> str:
    """A value of a Redis reply as text (this project's clients answer bytes, `decode_responses`
    off)."""
    return value.decode() if isinstance(value, bytes) else value


@cache
def unavailable() -> tuple[type[Exception], ...]:
    """What an unreachable or failing Redis raises, for an `except` (loaded on first use)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)
