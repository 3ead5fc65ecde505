"""The quota's statements: the daily slot upsert (also the first step of the send's single
statement on PostgreSQL, chat/repository.py), the day's count, the give-back, and the tokens
of a user's replies per day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from functools import cache
from typing import Any, cast

from sqlalchemy import Date, Integer, Table, bindparam, func, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat.models import Chatroom, Message
from gemini_backend.core.db import BigIntId
from gemini_backend.quota.models import DailyUsage

_usage = cast(Table, DailyUsage.__table__)
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
