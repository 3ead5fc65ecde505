"""Reading a reply as Server-Sent Events, from any API process.

Events: `thought` ({"text"}, the model's thought summary) and `delta` ({"text"}), `citations`
({"sources", "segments", "search_entry_point"}) after the text of a grounded reply, then exactly
one `done` or `error` (the final message); `reset` if an attempt died and the reply starts over.
Each has an id; `Last-Event-ID` resumes after it. A stream opened after the reply finished (and
its stream expired) is replayed from the database, thoughts and citations from its parts.

An open stream is one task, the request's (`core/sse.py`): its events (`reply_events`) wait in
each read for at most a jittered READ_BLOCK_MS (and no longer than until the next ping is
due), then yield a ping comment if the stream has been quiet for PING_SECONDS, or `None`
otherwise, which lets the response see whether the client is still there. A closed
connection is thus noticed within one read period (about 5 s); a server shutdown ends the
stream where it waits, within about half a second.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import weakref
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import Receive, Scope, Send

from gemini_backend.chat import repository as repo
from gemini_backend.chat.schemas import MessageOut
from gemini_backend.chat.states import FINAL_STATES, ReplyStatus
from gemini_backend.core.errors import TooManyRequests, is_outage
from gemini_backend.core.sse import EventSource, EventStreamResponse, ServerSentEvent, ping_event
from gemini_backend.core.streams import ReplyStream, StreamEvent

READ_BLOCK_MS = 5000
PING_SECONDS = 15.0  # a `: ping - <time>` comment after this long without an event
log = structlog.get_logger(__name__)


def _jitter() -> float:
    return random.uniform(0.8, 1.2)  # noqa: S311 (spreading load, not security)


def _quiet_period() -> float:
    # Jittered, so that thousands of quiet streams do not all check the database at once.
    return READ_BLOCK_MS / 1000 * _jitter()


# The quiet streams of a process check the database this many at a time; the others wait for
# their turn holding nothing but their place in line. Without it thousands of quiet streams
# queue in the connection pool, each with a session and a greenlet stack of its own (about
# 10 KB per stream with 5,000 streams), and take the pool from the requests.
CHECKS_AT_ONCE = 4
_check_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _check_turn() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    turns = _check_turns.get(loop)
    if turns is None:
        turns = _check_turns[loop] = asyncio.Semaphore(CHECKS_AT_ONCE)
    return turns


class StreamSlots:
    """The open reply streams of each user in this process, at most `limit` each: a client
    that opens streams and never reads them holds a bounded share of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[int, int] = {}

    def take(self, user_id: int) -> Callable[[], None]:
        """A slot for one more stream of `user_id` (TooManyStreams beyond the limit); returns
        the function that gives it back (once, however often it is called)."""
        count = self._open.get(user_id, 0)
        if count >= self.limit:
            raise TooManyStreams(STREAM_RETRY_SECONDS)
        self._open[user_id] = count + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            left = self._open[user_id] - 1
            if left:
                self._open[user_id] = left
            else:
                del self._open[user_id]

        return give_back

    def open_streams(self, user_id: int) -> int:
        return self._open.get(user_id, 0)


class TooManyStreams(TooManyRequests):
    code = "too_many_streams"
    detail = "Too many open reply streams; close one first."


STREAM_RETRY_SECONDS = 5


class ReplyStreamResponse(EventStreamResponse):
    """A reply's events as `text/event-stream`: one task per open stream, pings, a clean end on
    client disconnect and on server shutdown (see `core/sse.py`). `on_close` runs when the
    response is over, however it ended."""

    def __init__(
        self,
        events: EventSource,
        status_code: int = 200,  # FastAPI reads the route's documented status from here
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(events, status_code)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()


async def _current_row(
    sessionmaker: async_sessionmaker[AsyncSession], reply_id: int
) -> Row[Any] | None:
    # A function of its own: its session is gone when it returns (a generator's frame would
    # keep it until the next check).
    async with sessionmaker() as session:
        return await repo.reply_row(session, reply_id)


TERMINAL_EVENTS = frozenset({"done", "error"})


async def needs_replay(streams: ReplyStream, reply_id: int, status: str) -> bool:
    """Whether a stream of this reply is replayed from the database: it is finished and its
    stream has expired. Asked before the response starts, so that a Redis that does not answer
    is a 503, not a stream cut short."""
    return status in FINAL_STATES and not await streams.exists(reply_id)


def _replayed_parts(message: MessageOut) -> list[tuple[str, str]]:
    """The (event, data) a finished reply's stream had, from its stored parts: its thoughts,
    its text, its citations."""
    thoughts = "".join(p.get("text", "") for p in message.parts if p.get("type") == "thought")
    events = [("thought", json.dumps({"text": thoughts}))] if thoughts else []
    if message.content:
        events.append(("delta", json.dumps({"text": message.content})))
    for part in message.parts:
        if part.get("type") == "citation":
            events.append(("citations", json.dumps({k: v for k, v in part.items() if k != "type"})))
    return events


def _replay(message: MessageOut) -> list[ServerSentEvent]:
    events = [
        ServerSentEvent(data, event=kind, id=f"db-{number}")
        for number, (kind, data) in enumerate(_replayed_parts(message), start=1)
    ]
    final = "done" if message.status == ReplyStatus.COMPLETED else "error"
    final_id = f"db-{len(events) + 1}"
    events.append(ServerSentEvent(message.model_dump_json(), event=final, id=final_id, last=True))
    return events


async def _replayed(message: MessageOut) -> EventSource:
    """A finished reply from the database, its stream gone: its thoughts, text and citations
    (from its parts), then its final event."""
    yield ServerSentEvent(comment="stream open")
    for event in _replay(message):
        yield event


def reply_events(
    *,
    streams: ReplyStream,
    sessionmaker: async_sessionmaker[AsyncSession],
    reply_id: int,
    last_event_id: str | None,
    replay: MessageOut | None = None,
    ping_seconds: float | None = None,
) -> EventSource:
    """The events of a reply (`replay`: from this finished form of it, its stream gone; see
    `needs_replay`); `None` after a quiet read (nothing to send, see the module docstring); a
    ping comment after `ping_seconds` (default PING_SECONDS) without an event."""
    if replay is not None:
        return _replayed(replay)
    after = last_event_id if last_event_id and not last_event_id.startswith("db-") else None
    ping_every = PING_SECONDS if ping_seconds is None else ping_seconds
    # Only the id goes on: an open stream holds as little as it can.
    return _live_events(streams, sessionmaker, reply_id, after, ping_every)


async def _live_events(
    streams: ReplyStream,
    sessionmaker: async_sessionmaker[AsyncSession],
    reply_id: int,
    after: str | None,
    ping_every: float,
) -> EventSource:
    """The events of a reply on its stream after `after`, until its final event."""
    # A comment first: clients and proxies see the stream open before the first chunk.
    yield ServerSentEvent(comment="stream open")
    loop = asyncio.get_running_loop()
    ping_at = loop.time() + ping_every
    check_at = loop.time() + _quiet_period()
    while True:
        events = await _read(streams, reply_id, after, min(ping_at, check_at) - loop.time())
        if events is None:
            return  # Redis is unreachable: the client resumes with Last-Event-ID
        if events:
            batch = _batch(events)
            after = batch[-1].id
            yield batch
            if batch[-1].last:
                return
            now = loop.time()
            ping_at = now + ping_every
            check_at = now + _quiet_period()
            continue
        now = loop.time()
        if now >= ping_at:
            yield ping_event()
            ping_at = loop.time() + ping_every
        else:
            yield None  # nothing to send: the response looks at the client meanwhile
        if now < check_at:
            continue  # the read was cut short for the ping
        ending = await _missed_ending(streams, sessionmaker, reply_id, after)
        check_at = loop.time() + _quiet_period()
        if ending is not None:
            for event in ending:
                yield event
            return


async def _read(
    streams: ReplyStream, reply_id: int, after: str | None, wait: float
) -> list[StreamEvent] | None:
    """The events after `after`, waiting up to `wait` seconds for one; None when Redis is
    unreachable (the stream then ends cleanly)."""
    try:
        return await streams.read(reply_id, after, max(0, math.ceil(wait * 1000)))
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("reply_stream_interrupted", reply_id=reply_id, error=type(exc).__name__)
        return None


def _batch(events: list[StreamEvent]) -> tuple[ServerSentEvent, ...]:
    """The events of one read, to go out together (one write), up to a final event (the stream
    ends with it)."""
    batch = []
    for item in events:
        terminal = item.type in TERMINAL_EVENTS
        batch.append(ServerSentEvent(item.data, event=item.type, id=item.id, last=terminal))
        if terminal:
            break
    return tuple(batch)


async def _missed_ending(
    streams: ReplyStream,
    sessionmaker: async_sessionmaker[AsyncSession],
    reply_id: int,
    after: str | None,
) -> list[ServerSentEvent] | None:
    """A quiet stream's check that the reply did not end without its final event reaching the
    stream (a worker killed between its commit and the append): the events that end the
    stream (none for a reply deleted meanwhile), or None to go on waiting."""
    try:
        async with _check_turn():  # waiting for it costs a future, nothing more
            current = await _current_row(sessionmaker, reply_id)
    except Exception as exc:
        if not is_outage(exc):
            raise
        return None  # the database is busy or down: check again after the next quiet period
    if current is None:
        return []
    if current.status not in FINAL_STATES:
        return None
    siblings = repo.parse_sibling_list(current.sibling_list, current.id)
    return await _final_events(streams, reply_id, after, MessageOut.from_row(current, siblings))


async def _final_events(
    streams: ReplyStream, reply_id: int, after: str | None, final: MessageOut
) -> list[ServerSentEvent] | None:
    """The events that end the stream of a finished reply whose final event is missing from
    it: what the stream has after `after`, then the final message; None if the final event is
    there after all (the next read sends it)."""
    try:
        pending = await streams.read(reply_id, after, 0)
    except Exception as exc:
        if not is_outage(exc):
            raise
        pending = []  # the final event below carries the whole text
    if any(e.type in TERMINAL_EVENTS for e in pending):
        return None
    events = [ServerSentEvent(item.data, event=item.type, id=item.id) for item in pending]
    kind = "done" if final.status == ReplyStatus.COMPLETED else "error"
    events.append(
        ServerSentEvent(final.model_dump_json(), event=kind, id=after or "db-2", last=True)
    )
    return events
