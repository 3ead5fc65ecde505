"""Small client-side steps the tests share (what a mobile app would do)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gemini_backend.core.notices import NoticeFed

_numbers = itertools.count(1000)


def new_number() -> str:
    """A fresh valid Indian mobile number for each call (+91 98xxx xxxxx)."""
    return f"+9198765{next(_numbers):05d}"


async def request_otp(client: httpx.AsyncClient, number: str) -> str:
    response = await client.post("/auth/send-otp", json={"mobile_number": number})
    assert response.status_code == 200, response.text
    otp: str = response.json()["otp"]
    return otp


async def sign_in(client: httpx.AsyncClient, number: str | None = None) -> dict[str, Any]:
    """OTP sign-in-or-up; returns the token response."""
    number = number or new_number()
    otp = await request_otp(client, number)
    response = await client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def read_sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], last_event_id: str | None = None
) -> list[tuple[str, str, str]]:
    """The events (id, event, data) of a reply stream, up to its done/error event."""
    if last_event_id is not None:
        headers = {**headers, "Last-Event-ID": last_event_id}
    events: list[tuple[str, str, str]] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in fields:
                    events.append((fields.get("id", ""), fields["event"], fields.get("data", "")))
                    if fields["event"] in {"done", "error"}:
                        break
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return events


async def drop_reply_stream(app: Any, reply_id: int) -> None:
    """Remove a reply's stream as if it had expired: a reader must fall back to the database."""
    await app.state.services.reply_streams.clear(reply_id)
    if hasattr(app.state.services.reply_streams, "_buffers"):
        app.state.services.reply_streams._buffers.pop(reply_id, None)
    else:
        await app.state.services.redis.delete(
            f"{app.state.services.settings.redis_key_prefix}:reply:{reply_id}"
        )


async def insert_queued_reply(app: Any, room_id: int, reply_to: int | None) -> int:
    """A reply written straight into the database as `queued`, behind the service's back: no
    worker has its job and no change notice announces it. It answers `reply_to` (None: it
    follows the room's active leaf) and becomes the active leaf."""
    from gemini_backend.chat.models import Chatroom, Message

    now = app.state.services.clock.now()
    async with app.state.services.database.sessionmaker() as session:
        room = await session.get(Chatroom, room_id)
        assert room is not None
        queued = Message(
            chatroom_id=room_id,
            role="assistant",
            content="",
            status="queued",
            attempts=0,
            reply_to=reply_to,
            parent_id=reply_to if reply_to is not None else room.active_leaf_id,
            created_at=now,
            updated_at=now,
        )
        session.add(queued)
        await session.flush()
        room.active_leaf_id = queued.id
        await session.commit()
        return int(queued.id)


async def until_noticed(
    cache: NoticeFed, check: Callable[[], Awaitable[bool]], seconds: float = 10.0
) -> None:
    """Repeat `check` (a request) after each change notice `cache` hears, until it holds.

    A notice heard between reading the count and the check makes the wait return at once, so
    none is missed; `seconds` only bounds a failure."""

    async def checked() -> None:
        while True:
            heard = cache.notices_heard
            if await check():
                return
            await cache.wait_heard(heard)

    try:
        await asyncio.wait_for(checked(), seconds)
    except TimeoutError:
        raise AssertionError(f"the change never reached the cache within {seconds} s") from None
