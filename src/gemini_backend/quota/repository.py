"""The quota's statements: the daily slot upsert (also the first step of the send's single
statement on PostgreSQL, chat/repository.py), the day's count, the give-back, the tokens
of a user's replies per day, and the monthly token budget's reservations and settlements."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Date,
    Integer,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat.models import Chatroom, Message
from gemini_backend.core.db import BigIntId
from gemini_backend.quota.models import DailyUsage, MonthlyTokens, TokenReservation

_usage = cast(Table, DailyUsage.__table__)
_tokens = cast(Table, MonthlyTokens.__table__)
_reservations = cast(Table, TokenReservation.__table__)
_messages = cast(Table, Message.__table__)
_rooms = cast(Table, Chatroom.__table__)


@cache
def daily_slot_upsert(insert: Callable[..., Any], limited: bool, *, only_if: Any = None) -> Any:
    """`INSERT ... ON CONFLICT (user_id, day) DO UPDATE SET count = count + 1 [WHERE count <
    :slot_limit] RETURNING count`, built with `insert` (the dialect's own: the caller passes
    `postgresql.insert` or `sqlite.insert` of `sqlalchemy.dialects`). Bound per execution:
    `slot_user`, `slot_day` and, when `limited`, `slot_limit`. Built once per set of arguments.

    `only_if`: a selectable (a CTE of the same statement); the slot is taken only when it has
    a row (`INSERT ... SELECT ... FROM only_if`), else nothing is written and no row comes back.
    """
    user = bindparam("slot_user", type_=BigIntId)
    day = bindparam("slot_day", type_=Date())
    if only_if is None:
        stmt = insert(_usage).values(user_id=user, day=day, count=1)
    else:
        row: Any = select(user, day, literal_column("1")).select_from(only_if)
        stmt = insert(_usage).from_select(["user_id", "day", "count"], row)
    return stmt.on_conflict_do_update(
        index_elements=[_usage.c.user_id, _usage.c.day],
        set_={"count": _usage.c.count + 1},
        where=(_usage.c.count < bindparam("slot_limit", type_=Integer())) if limited else None,
    ).returning(_usage.c.count)


_USAGE_OF_DAY = select(_usage.c.count).where(
    _usage.c.user_id == bindparam("user_id"), _usage.c.day == bindparam("day")
)
_GIVE_BACK = (
    update(_usage)
    .where(
        _usage.c.user_id == bindparam("slot_user"),
        _usage.c.day == bindparam("slot_day"),
        _usage.c.count > 0,
    )
    .values(count=_usage.c.count - 1)
)


async def used_on(session: AsyncSession, user_id: int, day: date) -> int | None:
    """The slots `user_id` used on `day` (None: no row yet)."""
    params = {"user_id": user_id, "day": day}
    used: int | None = (await session.execute(_USAGE_OF_DAY, params)).scalar_one_or_none()
    return used


async def give_back_slot(session: AsyncSession, user_id: int, day: date) -> None:
    await session.execute(_GIVE_BACK, {"slot_user": user_id, "slot_day": day})


def _total(column: Any) -> Any:
    return func.coalesce(func.sum(column), 0)


# The finished replies of a user's rooms per quota day (the day in QUOTA_TIMEZONE of the send
# they answer; copies made by a fork have none and are not counted twice): through the user's
# rooms (ix_chatrooms_user_id), then each room's days (ix_messages_usage_day).
_day = _messages.c.quota_day
_TOKENS_PER_DAY = (
    select(
        _day,
        func.count(),
        _total(_messages.c.prompt_tokens),
        _total(_messages.c.output_tokens),
        _total(_messages.c.thinking_tokens),
        _total(_messages.c.cached_tokens),
    )
    .select_from(_messages.join(_rooms, _rooms.c.id == _messages.c.chatroom_id))
    .where(
        _rooms.c.user_id == bindparam("user_id"),
        _day.is_not(None),
        _day >= bindparam("since", type_=Date()),
        _day <= bindparam("until", type_=Date()),
        _messages.c.role == "assistant",
        _messages.c.completed_at.is_not(None),
    )
    .group_by(_day)
)


async def tokens_per_day(
    session: AsyncSession, user_id: int, since: date, until: date
) -> dict[date, tuple[int, int, int, int, int]]:
    """(replies, prompt, output, thinking, cached tokens) of each day from `since` to `until`
    that has any."""
    params = {"user_id": user_id, "since": since, "until": until}
    rows = await session.execute(_TOKENS_PER_DAY, params)
    return {day: (int(n), int(p), int(o), int(t), int(c)) for day, n, p, o, t, c in rows}


# --- the monthly token budget ---------------------------------------------------------------


@cache
def token_reserve_upsert(insert: Callable[..., Any], limited: bool) -> Any:
    """`INSERT INTO monthly_tokens ... ON CONFLICT (user_id, month) DO UPDATE SET reserved =
    reserved + :reserve [WHERE used + reserved < :budget_limit] RETURNING used, reserved`, with
    the dialect's `insert`, as `daily_slot_upsert`: the row lock makes concurrent reservations
    of a user strictly sequential, each judging the sum the one before left. No row back: the
    budget is spent. Bound: `budget_user`, `budget_month`, `reserve` and, when `limited`,
    `budget_limit`."""
    reserve = bindparam("reserve", type_=BigInteger())
    stmt = insert(_tokens).values(
        user_id=bindparam("budget_user", type_=BigIntId),
        month=bindparam("budget_month", type_=Date()),
        used=0,
        reserved=reserve,
    )
    spent = _tokens.c.used + _tokens.c.reserved
    return stmt.on_conflict_do_update(
        index_elements=[_tokens.c.user_id, _tokens.c.month],
        set_={"reserved": _tokens.c.reserved + reserve},
        where=(spent < bindparam("budget_limit", type_=BigInteger())) if limited else None,
    ).returning(_tokens.c.used, _tokens.c.reserved)


_RECORD_RESERVATION = insert(_reservations).values(
    reply_id=bindparam("reply_id", type_=BigIntId),
    user_id=bindparam("budget_user", type_=BigIntId),
    month=bindparam("budget_month", type_=Date()),
    tokens=bindparam("reserve", type_=BigInteger()),
)
_MONTH_TOKENS = select(_tokens.c.used, _tokens.c.reserved).where(
    _tokens.c.user_id == bindparam("user_id"), _tokens.c.month == bindparam("month")
)
_TAKE_RESERVATION = (
    delete(_reservations)
    .where(_reservations.c.reply_id == bindparam("reply_id", type_=BigIntId))
    .returning(_reservations.c.user_id, _reservations.c.month, _reservations.c.tokens)
)
# The room's message rows are locked before their reservations, in the order a reply's finish
# takes them (its row, then its reservation), so a room's deletion and a finish cannot
# deadlock.
_ROOM_REPLIES = (
    select(_messages.c.id)
    .where(_messages.c.chatroom_id == bindparam("room_id", type_=BigIntId))
    .with_for_update()
)
_TAKE_ROOM_RESERVATIONS = (
    delete(_reservations)
    .where(_reservations.c.reply_id.in_(_ROOM_REPLIES.scalar_subquery()))
    .returning(_reservations.c.user_id, _reservations.c.month, _reservations.c.tokens)
)
_SETTLE = (
    update(_tokens)
    .where(
        _tokens.c.user_id == bindparam("settle_user"),
        _tokens.c.month == bindparam("settle_month"),
    )
    .values(
        reserved=_tokens.c.reserved - bindparam("held", type_=BigInteger()),
        used=_tokens.c.used + bindparam("spent", type_=BigInteger()),
    )
)


async def reserve_tokens(
    db: Any, upsert: Any, params: dict[str, Any], reply_id: int
) -> tuple[int, int] | None:
    """Reserve `params["reserve"]` tokens for `reply_id` in `db` (a session or a connection in
    the send's transaction): the month's (used, reserved) after it, or None (refused, nothing
    written)."""
    row = (await db.execute(upsert, params)).one_or_none()
    if row is None:
        return None
    await db.execute(_RECORD_RESERVATION, {**params, "reply_id": reply_id})
    return int(row[0]), int(row[1])


async def month_tokens(session: AsyncSession, user_id: int, month: date) -> tuple[int, int]:
    row = (await session.execute(_MONTH_TOKENS, {"user_id": user_id, "month": month})).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


async def settle_reservation(session: AsyncSession, reply_id: int, spent: int) -> bool:
    """Replace the reply's reservation by `spent` tokens; False: it had none (never reserved,
    or already settled)."""
    row = (await session.execute(_TAKE_RESERVATION, {"reply_id": reply_id})).first()
    if row is None:
        return False
    user_id, month, held = row
    params = {"settle_user": user_id, "settle_month": month, "held": held, "spent": spent}
    await session.execute(_SETTLE, params)
    return True


async def release_room_reservations(session: AsyncSession, room_id: int) -> int:
    """Give back the reservations of a room's replies (the room is being deleted in this
    transaction); how many there were."""
    rows = (await session.execute(_TAKE_ROOM_RESERVATIONS, {"room_id": room_id})).all()
    held: dict[tuple[int, date], int] = {}
    for user_id, month, tokens in rows:
        held[(user_id, month)] = held.get((user_id, month), 0) + int(tokens)
    for (user_id, month), tokens in sorted(held.items()):
        params = {"settle_user": user_id, "settle_month": month, "held": tokens, "spent": 0}
        await session.execute(_SETTLE, params)
    return len(rows)
