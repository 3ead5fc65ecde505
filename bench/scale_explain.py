"""The hot statements of a message under `EXPLAIN (ANALYZE, BUFFERS)`, for bench/scale.py.

    python -m bench.scale_explain --url postgresql://... --out plans.json < scenarios.json

Each statement is run by the code's own repository function (so the plan is of the statement
the service runs, with its parameters), with every statement it sends rewritten to `EXPLAIN
(ANALYZE, BUFFERS, FORMAT JSON) ...`; the function then sees no rows. A scenario (a user's
room, from stdin: {"name": {"user_id": ..., "room_id": ...}}) is one transaction, rolled back:
a send, the claim of its reply (with the context read), a heartbeat, the finish, the
sweeper's query, the list page, the room's reads and a reply's read. Run as a subprocess with
PYTHONPATH set to the tree measured, so it imports that tree's statements.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from bench.scale import render, summarise
from gemini_backend.chat import repository as repo
from gemini_backend.config import Settings

EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "


class Capture:
    def __init__(self) -> None:
        self.label: str | None = None
        self.found: list[dict[str, Any]] = []

    async def explain(self, label: str, call: Callable[[], Awaitable[Any]]) -> None:
        self.label = label
        try:
            await call()
        except Exception as exc:  # the function found no rows where it expected one
            if not self.found or not self.found[-1]["label"].startswith(label):
                raise RuntimeError(f"{label}: nothing explained ({exc!r})") from exc
        finally:
            self.label = None


def hook(engine: Any, capture: Capture) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def before(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if capture.label is not None:
            statement = EXPLAIN + statement
        return statement, parameters

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def after(_conn, cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if capture.label is None:
            return
        rows = cursor.fetchall()
        plan = rows[0][0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        same = sum(1 for f in capture.found if f["label"].startswith(capture.label))
        label = capture.label if not same else f"{capture.label} #{same + 1}"
        capture.found.append(
            {
                "label": label,
                "sql": statement.removeprefix(EXPLAIN),
                "summary": summarise(plan[0]),
                "text": render(plan[0]["Plan"]),
                "plan": plan[0],
            }
        )


def _claim(session: AsyncSession, reply_id: int, now: dt.datetime) -> Callable[[], Any]:
    """The claim with its context read, as the measured tree spells it: batched
    (`claim_replies`, a batch of one here) or, in older trees, `claim_reply`."""
    statements = repo.POSTGRESQL
    budget = Settings.model_fields["context_max_tokens"].default
    if hasattr(statements, "claim_replies"):
        batch = {"reply_ids": [reply_id], "now": now, "model": "demo", "context_tokens": budget}
        return lambda: statements.claim_replies(session, **batch)
    claim: dict[str, Any] = {"reply_id": reply_id, "now": now, "model": "demo"}
    if "context_tokens" in inspect.signature(statements.claim_reply).parameters:
        claim["context_tokens"] = budget
    return lambda: statements.claim_reply(session, **claim)


async def scenario(
    engine: Any, capture: Capture, user_id: int, room_id: int, delete_room_id: int | None
) -> None:
    now = dt.datetime.now(dt.UTC)
    slot = {"slot_user": user_id, "slot_day": now.date(), "slot_limit": 1_000_000_000}
    async with engine.connect() as conn:
        trans = await conn.begin()
        session = AsyncSession(bind=conn)
        try:
            raw = await session.connection()

            def send() -> Awaitable[Any]:
                return repo.send_to_owned_room(
                    raw,
                    slot,
                    user_id=user_id,
                    room_id=room_id,
                    now=now,
                    content="An explained send.",
                )

            await capture.explain("send", send)
            found, exchange = await send()
            assert found, "the room is not the user's"
            assert exchange is not None
            reply_id = exchange.reply_id
            await capture.explain("claim + context read", _claim(session, reply_id, now))
            await capture.explain(
                "heartbeat",
                lambda: repo.heartbeat_reply(session, reply_id=reply_id, attempt=1, now=now),
            )
            params = {
                "reply_id": reply_id, "attempt": 1, "new_status": "completed",
                "text": "An explained reply.", "error_code": None, "reason": "stop",
                "prompt": 10, "output": 5, "thinking": None, "model": "demo", "cached": None,
                "parts": None, "now": now,
            }  # fmt: skip
            await capture.explain("finish", lambda: repo.finish_reply(session, params))
            await capture.explain("reply read (stream)", lambda: repo.reply_row(session, reply_id))
            cutoff = now - dt.timedelta(seconds=60)
            await capture.explain(
                "sweeper",
                lambda: repo.requeue_stuck_replies(
                    session, now=now, cutoff=cutoff, queued_before=None
                ),
            )
            await capture.explain(
                "sweeper (behind a backlog)",
                lambda: repo.requeue_stuck_replies(
                    session, now=now, cutoff=cutoff, queued_before=cutoff - dt.timedelta(hours=1)
                ),
            )
            await capture.explain("list page", lambda: repo.rooms_page(session, user_id, 21, None))
            await capture.explain("room", lambda: repo.owned_room_view(session, user_id, room_id))
            room = await repo.owned_room_view(session, user_id, room_id)
            assert room is not None
            assert room.active_leaf_id is not None
            leaf = room.active_leaf_id
            await capture.explain(
                "room's branch page", lambda: repo.branch_up_to(session, room_id, leaf, 50)
            )
            rows = await repo.branch_up_to(session, room_id, leaf, 50)
            parents = [r.parent_id for r in rows]
            await capture.explain(
                "room's sibling lists", lambda: repo.sibling_ids(session, room_id, parents)
            )
            if delete_room_id is not None:  # a room of one exchange: its cascade's cost
                await capture.explain(
                    "room delete (2 messages)", lambda: repo.delete_room(session, delete_room_id)
                )
        finally:
            await session.close()
            await trans.rollback()


async def main_async(url: str, scenarios: dict[str, Any]) -> dict[str, Any]:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    results: dict[str, Any] = {}
    capture = Capture()
    hook(engine, capture)
    try:
        for name, spec in scenarios.items():
            capture.found = []
            await scenario(
                engine, capture, spec["user_id"], spec["room_id"], spec.get("delete_room_id")
            )
            results[name] = capture.found
    finally:
        await engine.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_explain", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    scenarios = json.loads(sys.stdin.read())
    plans = asyncio.run(main_async(args.url, scenarios))
    Path(args.out).write_text(json.dumps(plans, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
