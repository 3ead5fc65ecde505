"""The reply jobs' queue on Redis Streams as the API process writes to it, without taskiq.

A job is the stream entry taskiq-redis' `RedisStreamBroker.kick` writes (`{b"data": message}`,
the message being taskiq's JSON `TaskiqMessage`), so `gemini-backend worker` (taskiq's
receiver over core/queue.py's broker) reads it as its own. The API process only enqueues: it
need not import taskiq, whose package imports its admin middleware and with it aiohttp (about
a second of a cold start on a loaded machine; bench/README.md).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from gemini_backend.config import Settings
from gemini_backend.core.redis import as_text, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

GENERATE_REPLY = "generate_reply"
log = structlog.get_logger(__name__)


class StreamEntries:
    """Stream entries (stream, the `data` field's value) for the caller to add with its own
    command, collected by `kicks_into`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def add(self, stream: str, data: bytes) -> None:
        self.items.append((stream, data))


_KICKS_INTO: ContextVar[StreamEntries | None] = ContextVar("kicks_into", default=None)


@contextlib.contextmanager
def kicks_into(entries: StreamEntries) -> Iterator[None]:
    """Jobs enqueued meanwhile (by this task) on Redis Streams are collected in `entries`
    instead of sent: the caller adds them with its own command, in one round trip. A send's
    job thus travels in its cache invalidation's script."""
    token = _KICKS_INTO.set(entries)
    try:
        yield
    finally:
        _KICKS_INTO.reset(token)


def stream_names(settings: Settings) -> tuple[str, str]:
    """The jobs' stream and the workers' consumer group."""
    prefix = settings.redis_key_prefix
    return f"{prefix}:jobs", f"{prefix}:workers"


def job_message(task_name: str, *args: Any) -> bytes:
    """taskiq's message for a call of `task_name` (its JSON formatter's output: a
    `TaskiqMessage` with a uuid4 hex task id and no labels)."""
    return json.dumps(
        {
            "task_id": uuid.uuid4().hex,
            "task_name": task_name,
            "labels": {},
            "labels_types": {},
            "args": list(args),
            "kwargs": {},
        }
    ).encode()


class RedisJobQueue:
    """Enqueues reply jobs (`XADD`, as taskiq-redis does) and tells how long the oldest unread
    one has waited; the reading side is core/queue.py's broker, in the workers."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.stream, self.group = stream_names(settings)

    async def declare_group(self) -> None:
        """The workers' consumer group, from the stream's first entry (as the broker declares
        it): `waiting_since` reads its position, also before any worker has started."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, reply_id: int) -> None:
        data = job_message(GENERATE_REPLY, reply_id)
        into = _KICKS_INTO.get()
        if into is not None:  # sent by the caller, with its own commands
            into.add(self.stream, data)
            return
        fields: Any = {b"data": data}
        await self.redis.xadd(self.stream, fields)

    async def waiting_since(self) -> datetime | None:
        """When the oldest job that no worker has read yet was queued, by the stream entry's
        id (Redis' clock); None when none is waiting, or when Redis cannot tell (no stream,
        no group, an outage). Jobs queued after it are waiting in the stream too."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.stream)
            last = next(
                (
                    group["last-delivered-id"]
                    for group in groups
                    if as_text(group["name"]) == self.group
                ),
                None,
            )
            if last is None:
                return None
            waiting: Any = await self.redis.xrange(self.stream, min=f"({as_text(last)}", count=1)
        except unavailable() as exc:
            log.warning("queue_position_unknown", error=type(exc).__name__)
            return None
        if not waiting:
            return None
        queued_ms = int(as_text(waiting[0][0]).split("-", 1)[0])
        return datetime.fromtimestamp(queued_ms / 1000, UTC)
