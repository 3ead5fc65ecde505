"""Traffic for the reliability tests that break a dependency under load: users, steady sends,
and the check that every accepted message ended with exactly one reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import bearer, sign_in


async def users_with_rooms(
    client: httpx.AsyncClient, count: int
) -> list[tuple[dict[str, str], int]]:
    """`count` new users signed in, each with a chatroom."""
    users = []
    for _ in range(count):
        auth = bearer(await sign_in(client))
        room = (await client.post("/chatroom", json={}, headers=auth)).json()["id"]
        users.append((auth, room))
    return users


async def steady_sends(
    client: httpx.AsyncClient,
    users: list[tuple[dict[str, str], int]],
    stop: asyncio.Event,
    accepted: list[tuple[dict[str, str], int, int]],
    statuses: list[tuple[float, int]],
) -> None:
    """Steady sends, round-robin over the users, until `stop`; records every answer."""
    i = 0
    while not stop.is_set():
        auth, room = users[i % len(users)]
        i += 1
        try:
            response = await client.post(
                f"/chatroom/{room}/message", json={"content": f"load {i}"}, headers=auth
            )
            statuses.append((time.monotonic(), response.status_code))
            if response.status_code == 202:
                accepted.append((auth, room, response.json()["message_id"]))
        except httpx.TransportError:
            statuses.append((time.monotonic(), 0))
        await asyncio.sleep(0.02)  # pacing of the load, not synchronisation


async def settled_replies(client: httpx.AsyncClient, accepted, deadline: float) -> dict[int, list]:
    """Every accepted message's replies, once all have reached a final state (or the deadline)."""
    while True:
        replies: dict[int, list] = {}
        pending = 0
        rooms = {(tuple(sorted(a.items())), r) for a, r, _ in accepted}
        for auth_items, room in rooms:
            auth = dict(auth_items)
            cursor = None
            while True:
                params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                page = (
                    await client.get(f"/chatroom/{room}/messages", params=params, headers=auth)
                ).json()
                for message in page["messages"]:
                    if message["role"] == "assistant":
                        replies.setdefault(message["reply_to"], []).append(message)
                        if message["status"] in {"queued", "generating"}:
                            pending += 1
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        if pending == 0 or time.monotonic() > deadline:
            return replies
        await asyncio.sleep(0.5)  # polling the API for the outcome


def error_lines(log: Path) -> str:
    """The API log's error records and tracebacks, for a failure message."""
    lines = log.read_text(errors="replace").splitlines()
    picked = [i for i, line in enumerate(lines) if '"error"' in line or "Traceback" in line]
    return "\n".join("\n".join(lines[i : i + 40]) for i in picked[:2])[-8000:]


async def fault_under_load(
    base: str,
    fault: Callable[[], None],
    *,
    users: int,
    client_timeout: float,
    before: float,
    after: float,
    logs: tuple[Path, ...],
) -> None:
    """Steady sends; `fault()` runs (in a thread) `before` seconds into them, the load goes on
    `after` seconds more and until a send is accepted again (within 30 s). Then: every answer
    was 202 or 503 (0, no answer within `client_timeout`, is a hang), and every accepted message
    ends with exactly one completed reply. Prints the fault's length and the recovery time."""
    async with httpx.AsyncClient(base_url=base, timeout=client_timeout) as client:
        senders = await users_with_rooms(client, users)
        accepted: list = []
        statuses: list[tuple[float, int]] = []
        stop = asyncio.Event()
        load = asyncio.create_task(steady_sends(client, senders, stop, accepted, statuses))
        await asyncio.sleep(before)  # steady load before the fault
        began = time.monotonic()
        await asyncio.to_thread(fault)
        over_at = time.monotonic()
        await asyncio.sleep(after)
        deadline = time.monotonic() + 30
        while not any(t > over_at and code == 202 for t, code in statuses):
            assert time.monotonic() < deadline, statuses[-20:]
            await asyncio.sleep(0.1)  # polling the recorded answers
        stop.set()
        await load
        recovered = min(t for t, code in statuses if t > over_at and code == 202)
        codes = sorted({code for _, code in statuses})
        print(
            f"fault: {over_at - began:.2f} s, first 202 after {recovered - over_at:.2f} s; "
            f"answers {codes}; {len(accepted)} accepted"
        )
        assert set(codes) <= {202, 503}, (codes, *map(error_lines, logs))
        replies = await settled_replies(client, accepted, time.monotonic() + 60)
        for _, _, message_id in accepted:
            answer = replies.get(message_id, [])
            # Never lost, never twice.
            assert len(answer) == 1, (message_id, answer, *map(error_lines, logs))
            assert answer[0]["status"] == "completed", answer
