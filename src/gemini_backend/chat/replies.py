"""Reading a reply as Server-Sent Events, from any API process.

Events: `delta` ({"text"}), then exactly one `done` or `error` (the final message); `reset` if
an attempt died and the reply starts over. Each has an id; `Last-Event-ID` resumes after it. A
stream opened after the reply finished (and its stream expired) is replayed from the database.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from gemini_backend.chat.models import Message
from gemini_backend.chat.schemas import MessageOut
from gemini_backend.core.errors import is_outage
from gemini_backend.core.streams import ReplyStream
from gemini_backend.worker.replies import COMPLETED, FINAL_STATES

READ_BLOCK_MS = 5000
log = structlog.get_logger(__name__)


def _jitter() -> float:
    return random.uniform(0.8, 1.2)  # noqa: S311 (spreading load, not security)


class ReplyStreamResponse(EventSourceResponse):
    """sse-starlette's response, ended cleanly when the server shuts down.

    On shutdown sse-starlette stops the stream but returns without the final (empty) body
    chunk, so clients see a truncated response. Here the stream is always terminated properly;
    an EventSource then reconnects with Last-Event-ID (to another process) and resumes.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = finished = False

        async def tracking_send(message: AsgiMessage) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        await super().__call__(scope, receive, tracking_send)
        if started and not finished:
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})


TERMINAL_EVENTS = frozenset({"done", "error"})


def _replay(message: MessageOut) -> list[ServerSentEvent]:
    events = []
    if message.content:
        events.append(
            ServerSentEvent(json.dumps({"text": message.content}), event="delta", id="db-1")
        )
    final = "done" if message.status == COMPLETED else "error"
    events.append(ServerSentEvent(message.model_dump_json(), event=final, id="db-2"))
    return events


async def reply_events(
    *,
    streams: ReplyStream,
    sessionmaker: async_sessionmaker[AsyncSession],
    snapshot: MessageOut,
    last_event_id: str | None,
) -> AsyncIterator[ServerSentEvent]:
    reply_id = snapshot.id
    # A comment first: clients and proxies see the stream open before the first chunk.
    yield ServerSentEvent(comment="stream open")
    if snapshot.status in FINAL_STATES and not await streams.exists(reply_id):
        for replayed in _replay(snapshot):
            yield replayed
        return
    after = last_event_id if last_event_id and not last_event_id.startswith("db-") else None
    while True:
        try:
            # Jittered, so that thousands of quiet streams do not all check the database at once.
            events = await streams.read(reply_id, after, int(READ_BLOCK_MS * _jitter()))
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Redis is unreachable: end the stream cleanly; the client resumes with Last-Event-ID.
            log.warning("reply_stream_interrupted", reply_id=reply_id, error=type(exc).__name__)
            return
        for item in events:
            yield ServerSentEvent(item.data, event=item.type, id=item.id)
            after = item.id
            if item.type in TERMINAL_EVENTS:
                return
        if events:
            continue
        # Quiet for a while: make sure the reply did not end without its final event reaching
        # the stream (a worker killed between its commit and the append).
        try:
            async with sessionmaker() as session:
                current = await session.get(Message, reply_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            continue  # the database is busy or down: check again after the next quiet period
        if current is None:
            return
        if current.status in FINAL_STATES:
            pending = await streams.read(reply_id, after, 0)
            if not any(e.type in TERMINAL_EVENTS for e in pending):
                final = MessageOut.from_row(current)
                for item in pending:
                    yield ServerSentEvent(item.data, event=item.type, id=item.id)
                kind = "done" if final.status == COMPLETED else "error"
                yield ServerSentEvent(final.model_dump_json(), event=kind, id=after or "db-2")
                return
