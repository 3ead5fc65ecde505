"""Queries of the chat domain.

The statements on the hot paths (the room check of every chat route, the send, a room's latest
messages) are built once, with their values bound per execution: building and cache-keying an
expression on every request showed in the profiles. Reads that only feed a response select the
columns it needs (no ORM identity map or instance loading).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gemini_backend.attachments import repository as attachments_repo
from gemini_backend.billing.models import Subscription
from gemini_backend.chat.models import Chatroom, IdempotencyKey, Message, RoomView
from gemini_backend.chat.states import ReplyStatus
from gemini_backend.core.db import BigIntId, UTCDateTime
from gemini_backend.core.sql import DriverStatement, bounded_delete
from gemini_backend.quota.repository import daily_slot_upsert
from gemini_backend.users.models import User

_rooms = cast(Table, Chatroom.__table__)
_plans = cast(Table, Subscription.__table__)
_messages = cast(Table, Message.__table__)
_keys = cast(Table, IdempotencyKey.__table__)


# The owner's row locked (FOR NO KEY UPDATE: foreign-key checks on it still pass) so that the
# count of their rooms and the insert of a new one are not interleaved with another create's.
# SQLite renders no lock: its single writer (BEGIN IMMEDIATE) serialises the two already.
_LOCK_OWNER = select(User.id).where(User.id == bindparam("user_id")).with_for_update(key_share=True)
_ROOM_COUNT = (
    select(func.count()).select_from(_rooms).where(_rooms.c.user_id == bindparam("user_id"))
)


async def room_count_locked(session: AsyncSession, user_id: int) -> int:
    """How many rooms the user has, with their row locked until the transaction ends: a room
    inserted in this transaction keeps the count true for every concurrent create."""
    params = {"user_id": user_id}
    await session.execute(_LOCK_OWNER, params)
    count: int = (await session.execute(_ROOM_COUNT, params)).scalar_one()
    return count


async def add_room(session: AsyncSession, room: Chatroom) -> Chatroom:
    session.add(room)
    await session.flush()
    return room


async def rooms_page(
    session: AsyncSession, user_id: int, limit: int, after: tuple[datetime, int] | None
) -> list[Chatroom]:
    stmt = select(Chatroom).where(Chatroom.user_id == user_id)
    if after is not None:
        stmt = stmt.where(tuple_(Chatroom.activity_at, Chatroom.id) < tuple_(*after))
    stmt = stmt.order_by(Chatroom.activity_at.desc(), Chatroom.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


# The room check of the routes that change the room (rename, delete): an ORM object, changed
# in place. Routes that only read it use `owned_room_view`.
_OWNED_ROOM = select(Chatroom).where(
    Chatroom.id == bindparam("room_id"), Chatroom.user_id == bindparam("user_id")
)


async def owned_room(session: AsyncSession, user_id: int, room_id: int) -> Chatroom | None:
    params = {"room_id": room_id, "user_id": user_id}
    return (await session.execute(_OWNED_ROOM, params)).scalar_one_or_none()


# The same check as a plain row, for the routes that only read the room (no ORM instance).
_OWNED_ROOM_VIEW = select(_rooms).where(
    _rooms.c.id == bindparam("room_id"), _rooms.c.user_id == bindparam("user_id")
)


async def owned_room_view(session: AsyncSession, user_id: int, room_id: int) -> RoomView | None:
    params = {"room_id": room_id, "user_id": user_id}
    row = (await session.execute(_OWNED_ROOM_VIEW, params)).one_or_none()
    return cast("RoomView | None", row)


async def delete_room(session: AsyncSession, room_id: int) -> None:
    await session.execute(delete(Chatroom).where(Chatroom.id == room_id))


async def user_replies(session: AsyncSession, user_id: int, states: Sequence[str]) -> list[int]:
    """The ids of the user's messages (in every room) in one of `states`."""
    rows = await session.execute(
        select(_messages.c.id)
        .join(Chatroom, Chatroom.id == _messages.c.chatroom_id)
        .where(Chatroom.user_id == user_id, _messages.c.status.in_(list(states)))
    )
    return list(rows.scalars())


async def room_replies(session: AsyncSession, room_id: int, states: Sequence[str]) -> list[int]:
    """The ids of the room's messages in one of `states`."""
    rows = await session.execute(
        select(_messages.c.id).where(
            _messages.c.chatroom_id == room_id, _messages.c.status.in_(list(states))
        )
    )
    return list(rows.scalars())


# --- messages as the API shows them -------------------------------------------------------

# The columns of a MessageOut (schemas.MessageOut), in one plain row per message.
MESSAGE_OUT_COLUMNS = (
    _messages.c.id,
    _messages.c.chatroom_id,
    _messages.c.role,
    _messages.c.content,
    _messages.c.status,
    _messages.c.error,
    _messages.c.finish_reason,
    _messages.c.prompt_tokens,
    _messages.c.output_tokens,
    _messages.c.thinking_tokens,
    _messages.c.model,
    _messages.c.reply_to,
    _messages.c.created_at,
    _messages.c.completed_at,
    _messages.c.parent_id,
    _messages.c.parts,
    _messages.c.cached_tokens,
)
# One message as MESSAGE_OUT_COLUMNS.
MessageRow = Row[*tuple[Any, ...]]

# The path from a message up to the root, at most `limit` messages (a branch's ids grow from
# the root down, so the walk's order is the ids' order): one primary-key lookup per step.
_up = select(
    _messages.c.id, _messages.c.parent_id, literal_column("1", Integer()).label("depth")
).where(_messages.c.id == bindparam("start_id"), _messages.c.chatroom_id == bindparam("room_id"))
_up_cte = _up.cte("path", recursive=True)
_PATH = _up_cte.union_all(
    select(_messages.c.id, _messages.c.parent_id, _up_cte.c.depth + 1)
    .join(_up_cte, _messages.c.id == _up_cte.c.parent_id)
    .where(_up_cte.c.depth < bindparam("limit", type_=Integer()))
)
_PATH_MESSAGES = (
    select(*MESSAGE_OUT_COLUMNS).join(_PATH, _PATH.c.id == _messages.c.id).order_by(_messages.c.id)
)
_CHILDREN_OF = (
    select(_messages.c.parent_id, _messages.c.id)
    .where(_messages.c.parent_id.in_(bindparam("parent_ids", expanding=True)))
    .order_by(_messages.c.id)
)
_ROOTS = (
    select(_messages.c.id)
    .where(_messages.c.chatroom_id == bindparam("room_id"), _messages.c.parent_id.is_(None))
    .order_by(_messages.c.id)
)


WHOLE_BRANCH = 2**31 - 1  # a `limit` of branch_up_to that takes the whole branch (an INTEGER)


async def branch_up_to(
    session: AsyncSession, room_id: int, start_id: int, limit: int
) -> list[MessageRow]:
    """The `limit` messages of the branch ending at `start_id` nearest to it (itself
    included), oldest first, as rows of MESSAGE_OUT_COLUMNS; empty if `start_id` is not a
    message of the room."""
    params = {"room_id": room_id, "start_id": start_id, "limit": limit}
    return list((await session.execute(_PATH_MESSAGES, params)).all())


async def sibling_ids(
    session: AsyncSession, room_id: int, parent_ids: Sequence[int | None]
) -> dict[int | None, list[int]]:
    """The children of each of `parent_ids` (None: the room's roots), oldest first."""
    found: dict[int | None, list[int]] = {parent: [] for parent in parent_ids}
    parents = [p for p in found if p is not None]
    if parents:
        for parent, child in await session.execute(_CHILDREN_OF, {"parent_ids": parents}):
            found[parent].append(child)
    if None in found:
        found[None] = list((await session.execute(_ROOTS, {"room_id": room_id})).scalars())
    return found


_ALL_MESSAGES = (
    select(*MESSAGE_OUT_COLUMNS)
    .where(_messages.c.chatroom_id == bindparam("room_id"))
    .order_by(_messages.c.id)
)


async def all_messages(session: AsyncSession, room_id: int) -> list[MessageRow]:
    """Every message of the room, oldest first (the tree)."""
    return list((await session.execute(_ALL_MESSAGES, {"room_id": room_id})).all())


# The deepest descendant of a message along the newest child at each step.
_down = select(_messages.c.id).where(
    _messages.c.id == bindparam("start_id"), _messages.c.chatroom_id == bindparam("room_id")
)
_down_cte = _down.cte("down", recursive=True)
_children = _messages.alias("children")
_DOWN = _down_cte.union_all(
    select(
        select(func.max(_children.c.id))
        .where(_children.c.parent_id == _down_cte.c.id)
        .scalar_subquery()
    ).where(_down_cte.c.id.is_not(None))
)
_NEWEST_LEAF = select(func.max(_DOWN.c.id))


async def newest_leaf_under(session: AsyncSession, room_id: int, message_id: int) -> int | None:
    """The leaf reached from `message_id` by always taking the newest child (None: not a
    message of the room)."""
    params = {"room_id": room_id, "start_id": message_id}
    leaf: int | None = (await session.execute(_NEWEST_LEAF, params)).scalar_one()
    return leaf


_SET_ACTIVE_LEAF = (
    update(_rooms)
    .where(_rooms.c.id == bindparam("room_id"))
    .values(active_leaf_id=bindparam("leaf_id"))
)


async def set_active_leaf(session: AsyncSession, room_id: int, leaf_id: int) -> None:
    await session.execute(_SET_ACTIVE_LEAF, {"room_id": room_id, "leaf_id": leaf_id})


_COPY = insert(_messages).returning(_messages.c.id, sort_by_parameter_order=True)
_LINK_COPY = (
    update(_messages)
    .where(_messages.c.id == bindparam("copy_id"))
    .values(parent_id=bindparam("copy_parent"), reply_to=bindparam("copy_answers"))
)


async def copy_path(
    session: AsyncSession, room_id: int, path: Sequence[MessageRow], now: datetime
) -> int:
    """Copies of `path` (a branch, root first, as rows of MESSAGE_OUT_COLUMNS) in the room
    `room_id`, linked to each other as the originals are: the id of the last copy. Two
    statements whatever the length: the rows, then their links."""
    rows = [
        {
            "chatroom_id": room_id,
            "role": m.role,
            "content": m.content,
            "status": m.status,
            "error": m.error,
            "finish_reason": m.finish_reason,
            "prompt_tokens": m.prompt_tokens,
            "output_tokens": m.output_tokens,
            "thinking_tokens": m.thinking_tokens,
            "cached_tokens": m.cached_tokens,
            "model": m.model,
            "parts": m.parts,
            "attempts": 0,
            "created_at": m.created_at,
            "updated_at": now,
            "completed_at": m.completed_at,
        }
        for m in path
    ]
    new_ids = list((await session.execute(_COPY, rows)).scalars())
    copy_of = dict(zip((m.id for m in path), new_ids, strict=True))
    links = [
        {
            "copy_id": copy_of[m.id],
            "copy_parent": copy_of.get(m.parent_id) if m.parent_id is not None else None,
            "copy_answers": copy_of.get(m.reply_to) if m.reply_to is not None else None,
        }
        for m in path
    ]
    await session.execute(_LINK_COPY, links)
    leaf: int = new_ids[-1]
    return leaf


# Every write that adds messages to a room or moves its leaf takes the room's row first: the
# writes on one room run one after another, each seeing the leaf the one before left. SQLite
# renders no lock: its single writer (BEGIN IMMEDIATE) serialises them already.
_LOCK_ROOM = (
    select(_rooms.c.active_leaf_id)
    .where(_rooms.c.id == bindparam("room_id"))
    .with_for_update(key_share=True)
)


async def lock_room(session: AsyncSession, room_id: int) -> int | None:
    """Lock the room's row until the transaction ends; its active leaf."""
    leaf: int | None = (await session.execute(_LOCK_ROOM, {"room_id": room_id})).scalar_one()
    return leaf


_IN_ROOM = select(_messages.c.id).where(
    _messages.c.id == bindparam("message_id"), _messages.c.chatroom_id == bindparam("room_id")
)


async def message_in_room(session: AsyncSession, room_id: int, message_id: int) -> bool:
    found = await session.execute(_IN_ROOM, {"room_id": room_id, "message_id": message_id})
    return found.first() is not None


_REPLIES_IN_PROGRESS = (
    select(_messages.c.id)
    .where(
        _messages.c.reply_to.in_(bindparam("answered", expanding=True)),
        _messages.c.status.in_([ReplyStatus.QUEUED, ReplyStatus.GENERATING]),
    )
    .limit(1)
)


async def replies_in_progress(session: AsyncSession, answered: Sequence[int]) -> bool:
    """Whether a reply to one of the user messages `answered` is queued or generating."""
    if not answered:
        return False
    found = await session.execute(_REPLIES_IN_PROGRESS, {"answered": list(answered)})
    return found.first() is not None


# A message of one of the user's rooms, the room's ownership checked in the same statement.
_OWNED_MESSAGE = (
    select(Message)
    .join(Chatroom, Chatroom.id == Message.chatroom_id)
    .where(
        Message.id == bindparam("message_id"),
        Message.chatroom_id == bindparam("room_id"),
        Chatroom.user_id == bindparam("user_id"),
    )
)


async def owned_message(
    session: AsyncSession, user_id: int, room_id: int, message_id: int
) -> Message | None:
    params = {"message_id": message_id, "room_id": room_id, "user_id": user_id}
    return (await session.execute(_OWNED_MESSAGE, params)).scalar_one_or_none()


_sibling = _messages.alias("sibling")
# The ids of a reply's siblings as "id,id,..." (any order), in a statement on `messages` that
# returns the reply's row (its final event): no second round trip. The row's own column is
# named in full: SQLite's RETURNING is rendered with bare names, which the subquery would take
# for the sibling's.
SIBLINGS_OF_ROW = (
    select(func.aggregate_strings(sql_cast(_sibling.c.id, String()), ","))
    .where(_sibling.c.parent_id == literal_column("messages.parent_id"))
    .scalar_subquery()
)


_REPLY_ROW = select(*_messages.c, SIBLINGS_OF_ROW.label("sibling_list")).where(
    _messages.c.id == bindparam("reply_id")
)


async def reply_row(session: AsyncSession, reply_id: int) -> Row[Any] | None:
    """A reply's row with its `sibling_list` (SIBLINGS_OF_ROW), or None."""
    found = (await session.execute(_REPLY_ROW, {"reply_id": reply_id})).one_or_none()
    return cast("Row[Any] | None", found)


def parse_sibling_list(found: str | None, own_id: int) -> list[int]:
    """SIBLINGS_OF_ROW's value as ids, oldest first."""
    return sorted(int(part) for part in found.split(",")) if found else [own_id]


# --- the send: quota slot, user message, queued reply, room counters ----------------------
#
# Bound per execution: the slot's values (quota.repository.daily_slot_upsert: slot_user,
# slot_day, slot_limit), room_id, now, and body (the user's text) with parent (the message it
# follows; the one-statement send reads it from the room) or answers (a retry: the user message
# the new reply answers). No name is a column's: SQLAlchemy would take a value under a column's
# name for that column.
_room_id = bindparam("room_id", type_=BigIntId)
_now = bindparam("now", type_=UTCDateTime())
_body = bindparam("body", type_=Text())
_answers = bindparam("answers", type_=BigIntId)
_parent = bindparam("parent", type_=BigIntId)
_owner = bindparam("owner", type_=BigIntId)
_leaf = bindparam("leaf", type_=BigIntId)
_quota_day = _messages.c.quota_day
_slot_day = bindparam("slot_day", type_=_quota_day.type)

# The columns each insert writes, then the values (SQL literals and the parameters above) in
# the same order. The receipt (sending.py) shows these values and the returned ids.
_USER_MESSAGE_COLUMNS: tuple[str, ...] = ("chatroom_id", "role", "content", "status")
_USER_MESSAGE_COLUMNS += ("attempts", "created_at", "updated_at", "completed_at", "parent_id")
_REPLY_COLUMNS: tuple[str, ...] = ("chatroom_id", "role", "content", "status", "attempts")
_REPLY_COLUMNS += ("reply_to", "parent_id", "quota_day", "created_at", "updated_at")


def _user_message_values(parent: Any) -> tuple[Any, ...]:
    return (
        _room_id,
        literal_column("'user'"),
        _body,
        literal_column(f"'{ReplyStatus.COMPLETED}'"),
        literal_column("0"),
        _now,
        _now,
        _now,
        parent,
    )


def _reply_values(reply_to: Any) -> tuple[Any, ...]:
    return (
        _room_id,
        literal_column("'assistant'"),
        literal_column("''"),
        literal_column(f"'{ReplyStatus.QUEUED}'"),
        literal_column("0"),
        reply_to,
        reply_to,
        _slot_day,
        _now,
        _now,
    )


def _touch(added: int, leaf: Any) -> Any:
    """The room's counters, and its active leaf: the new reply."""
    return update(_rooms).values(
        message_count=_rooms.c.message_count + literal_column(str(added)),
        last_message_at=_now,
        activity_at=_now,
        updated_at=_now,
        active_leaf_id=leaf,
    )


@cache
def _exchange_postgresql(limited: bool, with_user_message: bool, owner_checked: bool) -> Any:
    """The whole send as ONE statement (data-modifying CTEs):

        WITH slot  AS (INSERT INTO daily_usage ... ON CONFLICT DO UPDATE ... RETURNING count),
             um    AS (INSERT INTO messages (...) SELECT ... FROM slot RETURNING id),
             reply AS (INSERT INTO messages (..., reply_to, ...) SELECT ..., um.id FROM um
                       RETURNING id),
             touch AS (UPDATE chatrooms SET message_count = message_count + 2, ...
                       WHERE chatrooms.id = :room_id AND EXISTS (SELECT reply.id FROM reply))
        SELECT slot.count, um.id, reply.id FROM slot JOIN um ON true JOIN reply ON true

    No row back: the slot was not taken (the upsert's WHERE refused it), and since every insert
    reads its input from the step before, nothing was inserted or touched. The slot's row lock
    serialises concurrent sends of a user exactly as the upsert alone does. The reply's row is
    produced from the user message's row, so its id (from the same sequence) is the higher one,
    as with two separate inserts. A retry (`with_user_message=False`) inserts only the reply,
    answering `reply_to`.

    `owner_checked` (a send without a key): the room's ownership is checked and its row locked
    in the same statement, by a first step `room AS (SELECT id, active_leaf_id FROM chatrooms
    WHERE id = :room_id AND user_id = :owner FOR NO KEY UPDATE)` from which the slot's row is
    selected (so the room is taken before the slot, as `lock_room` does in the other writes);
    the user message follows the room's active leaf, and the statement always returns one row:
    (room found, slot count, user message id, reply id, parent), the last four NULL when
    nothing was written. Otherwise the caller has locked the room and binds `parent`. Either
    way the new reply becomes the room's active leaf.
    """
    room = (
        select(_rooms.c.id, _rooms.c.active_leaf_id)
        .where(_rooms.c.id == _room_id, _rooms.c.user_id == _owner)
        .with_for_update(key_share=True)
        .cte("room")
        if owner_checked
        else None
    )
    parent: Any = _parent if room is None else select(room.c.active_leaf_id).scalar_subquery()
    slot = daily_slot_upsert(postgresql.insert, limited, only_if=room).cte("slot")
    if with_user_message:
        um = (
            insert(_messages)
            .from_select(
                _USER_MESSAGE_COLUMNS, select(*_user_message_values(parent)).select_from(slot)
            )
            .returning(_messages.c.id)
            .cte("um")
        )
        source, answered, added = um, um.c.id, 2
    else:
        source, answered, added = slot, _answers, 1
    reply = (
        insert(_messages)
        .from_select(_REPLY_COLUMNS, select(*_reply_values(answered)).select_from(source))
        .returning(_messages.c.id)
        .cte("reply")
    )
    new_leaf = select(reply.c.id).scalar_subquery()
    touch = (
        _touch(added, new_leaf)
        .where(_rooms.c.id == _room_id, select(reply.c.id).exists())
        .cte("touch")
    )
    if room is not None:
        values = (slot.c.count, answered, reply.c.id)
        return select(
            select(room.c.id).exists(),
            *(select(c).scalar_subquery() for c in values),
            select(room.c.active_leaf_id).where(select(reply.c.id).exists()).scalar_subquery(),
        ).add_cte(touch)
    if with_user_message:
        joined = slot.join(um, true()).join(reply, true())
        columns = (slot.c.count, um.c.id, reply.c.id)
    else:
        joined = slot.join(reply, true())
        columns = (slot.c.count, _answers, reply.c.id)
    return select(*columns).select_from(joined).add_cte(touch)


# SQLite (embedded mode) has RETURNING but no data-modifying CTEs: the same steps one by one,
# under the write lock every transaction takes (BEGIN IMMEDIATE).
_INSERT_USER_MESSAGE = (
    insert(_messages)
    .from_select(_USER_MESSAGE_COLUMNS, select(*_user_message_values(_parent)))
    .returning(_messages.c.id)
)
_INSERT_REPLY = (
    insert(_messages)
    .from_select(_REPLY_COLUMNS, select(*_reply_values(_answers)))
    .returning(_messages.c.id)
)
_TOUCH_ROOM = {added: _touch(added, _leaf).where(_rooms.c.id == _room_id) for added in (1, 2)}


@dataclass(frozen=True, slots=True)
class Exchange:
    used: int  # the slots of the day used, this one included
    message_id: int  # the user message
    reply_id: int  # the queued reply
    parent_id: int | None = None  # the message the user message follows (a send, an edit)


def _exchange_params(
    slot: dict[str, Any],
    room_id: int,
    now: datetime,
    content: str | None,
    reply_to: int | None,
    parent_id: int | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {**slot, "room_id": room_id, "now": now}
    if content is not None:
        params["body"] = content
        params["parent"] = parent_id
    else:
        params["answers"] = reply_to
    return params


async def _insert_exchange_postgresql(
    session: AsyncSession,
    slot: dict[str, Any],
    *,
    room_id: int,
    now: datetime,
    content: str | None = None,
    parent_id: int | None = None,
    reply_to: int | None = None,
) -> Exchange | None:
    """ChatStatements.insert_exchange on PostgreSQL: one statement."""
    params = _exchange_params(slot, room_id, now, content, reply_to, parent_id)
    stmt = _exchange_postgresql("slot_limit" in slot, content is not None, False)
    row = (await session.execute(stmt, params)).one_or_none()
    return None if row is None else Exchange(row[0], row[1], row[2], parent_id)


async def _insert_exchange_sqlite(
    session: AsyncSession,
    slot: dict[str, Any],
    *,
    room_id: int,
    now: datetime,
    content: str | None = None,
    parent_id: int | None = None,
    reply_to: int | None = None,
) -> Exchange | None:
    """ChatStatements.insert_exchange on SQLite: the same steps one by one."""
    params = _exchange_params(slot, room_id, now, content, reply_to, parent_id)
    limited = "slot_limit" in slot
    used = (
        await session.execute(daily_slot_upsert(sqlite.insert, limited), params)
    ).scalar_one_or_none()
    if used is None:
        return None
    if limited and used > slot["slot_limit"]:
        return Exchange(used, 0, 0)  # refused by the caller (a limit of 0): nothing inserted
    if content is not None:
        params["answers"] = (await session.execute(_INSERT_USER_MESSAGE, params)).scalar_one()
    params["leaf"] = reply_id = (await session.execute(_INSERT_REPLY, params)).scalar_one()
    await session.execute(_TOUCH_ROOM[2 if content is not None else 1], params)
    return Exchange(used, params["answers"], reply_id, parent_id)


@cache
def _send_on_driver(limited: bool) -> DriverStatement:
    return DriverStatement(_exchange_postgresql(limited, True, True))


async def send_to_owned_room(
    conn: AsyncConnection,
    slot: dict[str, Any],
    *,
    user_id: int,
    room_id: int,
    now: datetime,
    content: str,
    alone: bool = False,
) -> tuple[bool, Exchange | None]:
    """PostgreSQL: `insert_exchange` of a new user message with the room's ownership checked in
    the same single statement. (False, None): no such room of this user; (True, None): the slot
    was not taken; nothing is written in either case. The caller judges the count and rolls
    back on a refusal, as with `insert_exchange`. `alone`: `conn` is in autocommit and runs
    nothing else, so the statement goes to the driver directly (`DriverStatement`)."""
    params = {**slot, "room_id": room_id, "owner": user_id, "now": now, "body": content}
    limited = "slot_limit" in slot
    if alone:
        row = await _send_on_driver(limited).row(conn, params)
    else:
        row = (await conn.execute(_exchange_postgresql(limited, True, True), params)).one()
    found, used, message_id, reply_id, parent_id = row
    if not found or used is None:
        return bool(found), None
    return True, Exchange(used, message_id, reply_id, parent_id)


async def set_parts(session: AsyncSession, message_id: int, parts: list[dict[str, Any]]) -> None:
    await session.execute(update(_messages).where(_messages.c.id == message_id).values(parts=parts))


# --- idempotency keys ---------------------------------------------------------------------

_EXPIRED_KEY = delete(_keys).where(
    _keys.c.user_id == bindparam("key_user"),
    _keys.c.key == bindparam("key_text"),
    _keys.c.created_at < bindparam("cutoff", type_=UTCDateTime()),
)
_KEY_RECEIPT = select(_keys.c.receipt).where(
    _keys.c.user_id == bindparam("key_user"), _keys.c.key == bindparam("key_text")
)
_STORE_RECEIPT = (
    update(_keys).where(_keys.c.id == bindparam("key_id")).values(receipt=bindparam("receipt_json"))
)


def _claim_key(insert: Any) -> Any:
    return (
        insert(_keys)
        .values(
            user_id=bindparam("key_user", type_=BigIntId),
            key=bindparam("key_text", type_=_keys.c.key.type),
            chatroom_id=bindparam("room_id", type_=BigIntId),
            created_at=bindparam("now", type_=UTCDateTime()),
        )
        .on_conflict_do_nothing(index_elements=[_keys.c.user_id, _keys.c.key])
        .returning(_keys.c.id)
    )


async def claim_idempotency_key(
    session: AsyncSession,
    sql: ChatStatements,
    *,
    user_id: int,
    room_id: int,
    key: str,
    now: datetime,
    window: timedelta,
) -> int | None:
    """Insert the (user, key) row (an expired one is deleted first): its id, or None if the key
    is in use. A concurrent request with the same key waits on the unique row until this
    transaction ends."""
    params = {"key_user": user_id, "key_text": key, "room_id": room_id, "now": now}
    await session.execute(_EXPIRED_KEY, {**params, "cutoff": now - window})
    inserted: int | None = (await session.execute(sql.claim_key, params)).scalar_one_or_none()
    return inserted


async def idempotency_receipt(session: AsyncSession, user_id: int, key: str) -> str | None:
    params = {"key_user": user_id, "key_text": key}
    receipt: str | None = (await session.execute(_KEY_RECEIPT, params)).scalar_one()
    return receipt


async def live_receipt(
    session: AsyncSession, user_id: int, key: str, now: datetime, window: timedelta
) -> str | None:
    """The stored receipt of a key used within `window`, if any (a read: nothing is locked)."""
    found = await session.execute(
        _KEY_RECEIPT.where(_keys.c.created_at >= bindparam("cutoff", type_=UTCDateTime())),
        {"key_user": user_id, "key_text": key, "cutoff": now - window},
    )
    receipt: str | None = found.scalar_one_or_none()
    return receipt


async def store_receipt(session: AsyncSession, key_id: int, receipt: str) -> None:
    await session.execute(_STORE_RECEIPT, {"key_id": key_id, "receipt_json": receipt})


async def purge_expired_idempotency_keys(
    session: AsyncSession, *, cutoff: datetime, limit: int
) -> int:
    """Up to `limit` keys claimed before `cutoff` (past their window: a claim replaces such a
    row anyway), in the caller's short transaction (worker/housekeeping.py)."""
    stmt = bounded_delete(_keys, _keys.c.id, _keys.c.created_at < cutoff, limit=limit)
    return (await session.execute(stmt)).rowcount  # type: ignore[attr-defined, no-any-return]


# --- producing a reply: claim, heartbeat, finish, title, sweep (chat/generation.py) --------
#
# Core statements on the tables, built once: the ORM's bulk-update path (identity-map
# evaluation, statement building per call) was a fifth of a worker's CPU per reply.

MAX_TURNS = 500  # the most messages read back as a reply's conversation

# The claim: a conditional UPDATE, so a duplicate delivery finds nothing to take.
_CLAIM = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("reply_id"),
        _messages.c.status == ReplyStatus.QUEUED,
        _messages.c.role == "assistant",
    )
    .values(
        status=ReplyStatus.GENERATING,
        attempts=_messages.c.attempts + 1,
        updated_at=bindparam("now", type_=UTCDateTime()),
        # The room's model, else the default (the finish writes the one that answered).
        model=func.coalesce(
            select(_rooms.c.model).where(_rooms.c.id == _messages.c.chatroom_id).scalar_subquery(),
            bindparam("model_name"),
        ),
    )
    .returning(
        _messages.c.attempts,
        _messages.c.chatroom_id,
        _messages.c.reply_to,
        _messages.c.created_at,
        _messages.c.parent_id,
    )
)
# The room, its model and options, and its owner's plan (the tier decides what a reply may use).
_ROOM = (
    select(
        _rooms.c.id,
        _rooms.c.user_id,
        _rooms.c.system_prompt,
        _rooms.c.auto_title,
        _rooms.c.model,
        _rooms.c.temperature,
        _rooms.c.thinking,
        _rooms.c.grounding,
        _plans.c.status,
        _plans.c.current_period_end,
    )
    .select_from(_rooms.outerjoin(_plans, _plans.c.user_id == _rooms.c.user_id))
    .where(_rooms.c.id == bindparam("room_id"))
)


def _text_tokens(content: Any) -> Any:
    """ai.base.estimate_tokens in SQL: max(1, (characters + 3) // 4), of a completed message
    (the others are not part of a conversation)."""
    length = func.length(content)
    tokens = case((length > 0, (length + 3) // 4), else_=1)
    return case((_messages.c.status == ReplyStatus.COMPLETED, tokens), else_=0)


# A reply's conversation: the branch from the message it answers up to the root (at most
# MAX_TURNS messages), the completed ones, newest first: never another branch's message. The
# walk stops past the message whose text alone spends `context_tokens` (the most a context may
# hold): generation.py keeps the newest turns within the budget, so it never reads further,
# and a reply deep in a long room reads its budget's worth of rows, not MAX_TURNS.
_context_tokens = bindparam("context_tokens", type_=Integer())
_context_up = _up.add_columns(
    _messages.c.role,
    _messages.c.content,
    _messages.c.status,
    _text_tokens(_messages.c.content).label("spent"),
).cte("context", recursive=True)
_CONTEXT = _context_up.union_all(
    select(
        _messages.c.id,
        _messages.c.parent_id,
        _context_up.c.depth + 1,
        _messages.c.role,
        _messages.c.content,
        _messages.c.status,
        _context_up.c.spent + _text_tokens(_messages.c.content),
    )
    .join(_context_up, _messages.c.id == _context_up.c.parent_id)
    .where(_context_up.c.depth < MAX_TURNS, _context_up.c.spent <= _context_tokens)
)
_TURNS = (
    select(_CONTEXT.c.id, _CONTEXT.c.role, _CONTEXT.c.content)
    .where(_CONTEXT.c.status == ReplyStatus.COMPLETED)
    .order_by(_CONTEXT.c.id.desc())
)
# PostgreSQL: the claims of many replies (a worker's group commit, core/batching.py), each
# with its room and conversation, in ONE statement (one round trip instead of three per reply).
# A conversation comes back as three arrays, newest first. The reads see the rows as they were
# before the claim, which changes only the replies themselves (never part of a conversation:
# a reply is never an ancestor of another reply being claimed, which answers a user message).
# The states, the limits and the token estimate are _CLAIM's and _CONTEXT's.
_CLAIM_POSTGRESQL = text(
    """
    WITH RECURSIVE claimed AS (
        UPDATE messages
        SET status = :generating, attempts = attempts + 1, updated_at = :now,
            model = COALESCE(
                (SELECT r.model FROM chatrooms AS r WHERE r.id = messages.chatroom_id),
                :model_name
            )
        WHERE id = ANY(:reply_ids) AND status = :queued AND role = 'assistant'
        RETURNING id, attempts, chatroom_id, reply_to, created_at, parent_id
    ), context AS (
        SELECT claimed.id AS reply_id, m.id, m.parent_id, 1 AS depth, m.role, m.content,
               m.status,
               CASE WHEN m.status = :completed
                    THEN GREATEST(1, (length(m.content) + 3) / 4) ELSE 0 END AS spent
        FROM messages AS m JOIN claimed ON m.id = claimed.parent_id
        WHERE m.chatroom_id = claimed.chatroom_id
        UNION ALL
        SELECT context.reply_id, m.id, m.parent_id, context.depth + 1, m.role, m.content,
               m.status,
               context.spent + CASE WHEN m.status = :completed
                                    THEN GREATEST(1, (length(m.content) + 3) / 4) ELSE 0 END
        FROM messages AS m JOIN context ON m.id = context.parent_id
        WHERE context.depth < :max_turns AND context.spent <= :context_tokens
    )
    SELECT claimed.id, claimed.attempts, claimed.chatroom_id, claimed.reply_to,
           claimed.created_at, claimed.parent_id, room.id, room.user_id, room.system_prompt,
           room.auto_title, room.model, room.temperature, room.thinking, room.grounding,
           plan.status, plan.current_period_end,
           turns.ids, turns.roles, turns.contents,
           (SELECT json_agg(json_build_object(
                       'id', a.id, 'message_id', a.message_id, 'filename', a.filename,
                       'media_type', a.media_type, 'size', a.size, 'sha256', a.sha256,
                       'storage_key', a.storage_key) ORDER BY a.id)
            FROM attachments AS a
            WHERE a.state = 'stored'
              AND a.message_id IN (
                  SELECT c.id FROM context AS c
                  WHERE c.reply_id = claimed.id AND c.status = :completed
              )
           ) AS attachments
    FROM claimed
    LEFT JOIN chatrooms AS room ON room.id = claimed.chatroom_id
    LEFT JOIN subscriptions AS plan ON plan.user_id = room.user_id
    CROSS JOIN LATERAL (
        SELECT array_agg(c.id ORDER BY c.id DESC) AS ids,
               array_agg(c.role ORDER BY c.id DESC) AS roles,
               array_agg(c.content ORDER BY c.id DESC) AS contents
        FROM context AS c WHERE c.reply_id = claimed.id AND c.status = :completed
    ) AS turns
    """
).bindparams(
    bindparam("now", type_=UTCDateTime()),
    bindparam("context_tokens", type_=Integer()),
    queued=str(ReplyStatus.QUEUED),
    generating=str(ReplyStatus.GENERATING),
    completed=str(ReplyStatus.COMPLETED),
    max_turns=MAX_TURNS,
)
# The reply as one attempt claimed it: still generating, not taken over by a later attempt.
_THIS_ATTEMPT = update(_messages).where(
    _messages.c.id == bindparam("reply_id"),
    _messages.c.status == ReplyStatus.GENERATING,
    _messages.c.attempts == bindparam("attempt"),
)
_HEARTBEAT = _THIS_ATTEMPT.values(updated_at=bindparam("now", type_=UTCDateTime()))
_FINISH = _THIS_ATTEMPT.values(
    status=bindparam("new_status"),
    content=bindparam("text"),
    error=bindparam("error_code"),
    finish_reason=bindparam("reason"),
    prompt_tokens=bindparam("prompt"),
    output_tokens=bindparam("output"),
    thinking_tokens=bindparam("thinking"),
    model=bindparam("model"),
    cached_tokens=bindparam("cached"),
    # None is SQL NULL (the reply is its text alone), not a JSON null.
    parts=bindparam("parts", type_=JSON(none_as_null=True)),
    completed_at=bindparam("now", type_=UTCDateTime()),
    updated_at=bindparam("now", type_=UTCDateTime()),
).returning(*_messages.c, SIBLINGS_OF_ROW.label("sibling_list"))
# PostgreSQL: the finishes of many replies (a worker's group commit) in ONE statement, each
# row as _FINISH writes it: one array per column, unnested in lockstep. The names are not
# columns' (the arrays' elements are the `f_` columns of `finished`).
_FINISHED = (
    func.unnest(
        sql_cast(bindparam("f_ids"), postgresql.ARRAY(BigIntId)),
        sql_cast(bindparam("f_attempts"), postgresql.ARRAY(Integer)),
        sql_cast(bindparam("f_statuses"), postgresql.ARRAY(Text)),
        sql_cast(bindparam("f_texts"), postgresql.ARRAY(Text)),
        sql_cast(bindparam("f_errors"), postgresql.ARRAY(Text)),
        sql_cast(bindparam("f_reasons"), postgresql.ARRAY(Text)),
        sql_cast(bindparam("f_prompts"), postgresql.ARRAY(Integer)),
        sql_cast(bindparam("f_outputs"), postgresql.ARRAY(Integer)),
        sql_cast(bindparam("f_thinkings"), postgresql.ARRAY(Integer)),
        sql_cast(bindparam("f_models"), postgresql.ARRAY(Text)),
        sql_cast(bindparam("f_cacheds"), postgresql.ARRAY(Integer)),
        sql_cast(bindparam("f_parts"), postgresql.ARRAY(Text)),  # JSON text, or NULL
    )
    .table_valued(
        "f_id",
        "f_attempt",
        "f_status",
        "f_text",
        "f_error",
        "f_reason",
        "f_prompt",
        "f_output",
        "f_thinking",
        "f_model",
        "f_cached",
        "f_parts",
    )
    .render_derived(name="finished")
)
_FINISH_MANY = (
    update(_messages)
    .where(
        _messages.c.id == _FINISHED.c.f_id,
        _messages.c.status == ReplyStatus.GENERATING,
        _messages.c.attempts == _FINISHED.c.f_attempt,
    )
    .values(
        status=_FINISHED.c.f_status,
        content=_FINISHED.c.f_text,
        error=_FINISHED.c.f_error,
        finish_reason=_FINISHED.c.f_reason,
        prompt_tokens=_FINISHED.c.f_prompt,
        output_tokens=_FINISHED.c.f_output,
        thinking_tokens=_FINISHED.c.f_thinking,
        model=_FINISHED.c.f_model,
        cached_tokens=_FINISHED.c.f_cached,
        parts=sql_cast(_FINISHED.c.f_parts, JSON),
        completed_at=bindparam("now", type_=UTCDateTime()),
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(*_messages.c, SIBLINGS_OF_ROW.label("sibling_list"))
)
_TITLE = (
    update(_rooms)
    .where(_rooms.c.id == bindparam("room_id"), _rooms.c.auto_title.is_(True))
    .values(name=bindparam("title"), auto_title=False)
)


@dataclass(frozen=True, slots=True)
class RoomPlan:
    """The owner's subscription, as users/tier.py's PlanState."""

    status: str
    current_period_end: datetime | None


@dataclass(frozen=True, slots=True)
class ReplyRoom:
    id: int
    user_id: int
    system_prompt: str | None
    auto_title: bool
    model: str | None
    temperature: float | None
    thinking: str | None
    grounding: bool
    plan_status: str | None  # None: the owner never had a subscription
    plan_period_end: datetime | None

    @property
    def plan(self) -> RoomPlan | None:
        if self.plan_status is None:
            return None
        return RoomPlan(self.plan_status, self.plan_period_end)


@dataclass(frozen=True, slots=True)
class ClaimedReply:
    attempts: int
    room_id: int
    user_message_id: int | None
    created_at: datetime
    room: ReplyRoom | None  # None: the room is gone
    turns: list[tuple[int, str, str]]  # (id, role, content) of its branch, newest first
    # The stored attachments of those messages (id, message_id, filename, media_type, size,
    # sha256, storage_key), oldest first.
    attachments: list[dict[str, Any]] = field(default_factory=list)


async def _claim_replies_postgresql(
    session: AsyncSession,
    *,
    reply_ids: Sequence[int],
    now: datetime,
    model: str,
    context_tokens: int,
) -> dict[int, ClaimedReply]:
    """ChatStatements.claim_replies on PostgreSQL: the claims and the reads in one statement."""
    params = {
        "reply_ids": list(reply_ids),
        "now": now,
        "model_name": model,
        "context_tokens": context_tokens,
    }
    claimed: dict[int, ClaimedReply] = {}
    for row in await session.execute(_CLAIM_POSTGRESQL, params):
        room = ReplyRoom(*row[6:16]) if row[6] is not None else None
        turns = list(zip(row[16] or (), row[17] or (), row[18] or (), strict=True))
        found = row[19]
        attachments = (json.loads(found) if isinstance(found, str) else found) or []
        claimed[row[0]] = ClaimedReply(row[1], row[2], row[3], row[4], room, turns, attachments)
    return claimed


async def _claim_reply_sqlite(
    session: AsyncSession, *, reply_id: int, now: datetime, model: str, context_tokens: int
) -> ClaimedReply | None:
    """ChatStatements.claim_reply on SQLite: the claim committed on its own, then the reads."""
    params = {"reply_id": reply_id, "now": now, "model_name": model}
    claimed = (await session.execute(_CLAIM, params)).one_or_none()
    await session.commit()
    if claimed is None:
        return None
    attempts, room_id, user_message_id, created_at, parent_id = claimed
    found = (await session.execute(_ROOM, {"room_id": room_id})).one_or_none()
    reads = {"room_id": room_id, "start_id": parent_id, "context_tokens": context_tokens}
    turns = [(id_, role, content) for id_, role, content in await session.execute(_TURNS, reads)]
    room = ReplyRoom(*cast(tuple[Any, ...], found)) if found is not None else None
    attachments = [
        row._asdict() for row in await attachments_repo.of_messages(session, [t[0] for t in turns])
    ]
    return ClaimedReply(attempts, room_id, user_message_id, created_at, room, turns, attachments)


async def _claim_replies_sqlite(
    session: AsyncSession,
    *,
    reply_ids: Sequence[int],
    now: datetime,
    model: str,
    context_tokens: int,
) -> dict[int, ClaimedReply]:
    """ChatStatements.claim_replies on SQLite (one writer): each claimed on its own."""
    claimed: dict[int, ClaimedReply] = {}
    for reply_id in reply_ids:
        found = await _claim_reply_sqlite(
            session, reply_id=reply_id, now=now, model=model, context_tokens=context_tokens
        )
        if found is not None:
            claimed[reply_id] = found
    return claimed


async def heartbeat_reply(
    session: AsyncSession, *, reply_id: int, attempt: int, now: datetime
) -> None:
    await session.execute(_HEARTBEAT, {"reply_id": reply_id, "attempt": attempt, "now": now})


async def finish_reply(session: AsyncSession, params: dict[str, Any]) -> Row[Any] | None:
    """Write a reply's outcome if `attempt` still owns it: the reply's row, or None (another
    attempt took over). `params`: reply_id, attempt, new_status, text, error_code, reason,
    prompt, output, thinking, model (the one that answered), cached, parts, now."""
    return (await session.execute(_FINISH, params)).one_or_none()


async def _finish_replies_postgresql(
    session: AsyncSession, finishes: Sequence[dict[str, Any]], now: datetime
) -> dict[tuple[int, int], Row[Any]]:
    """ChatStatements.finish_replies on PostgreSQL: one statement for them all."""
    params = {
        "f_ids": [f["reply_id"] for f in finishes],
        "f_attempts": [f["attempt"] for f in finishes],
        "f_statuses": [str(f["new_status"]) for f in finishes],
        "f_texts": [f["text"] for f in finishes],
        "f_errors": [f["error_code"] for f in finishes],
        "f_reasons": [f["reason"] for f in finishes],
        "f_prompts": [f["prompt"] for f in finishes],
        "f_outputs": [f["output"] for f in finishes],
        "f_thinkings": [f["thinking"] for f in finishes],
        "f_models": [f["model"] for f in finishes],
        "f_cacheds": [f["cached"] for f in finishes],
        "f_parts": [None if f["parts"] is None else json.dumps(f["parts"]) for f in finishes],
        "now": now,
    }
    rows = await session.execute(_FINISH_MANY, params)
    return {(row.id, row.attempts): row for row in rows}


async def _finish_replies_sqlite(
    session: AsyncSession, finishes: Sequence[dict[str, Any]], now: datetime
) -> dict[tuple[int, int], Row[Any]]:
    """ChatStatements.finish_replies on SQLite (one writer: nothing to gain from one
    statement): each its own _FINISH."""
    done: dict[tuple[int, int], Row[Any]] = {}
    for finish in finishes:
        row = await finish_reply(session, {**finish, "now": now})
        if row is not None:
            done[(row.id, row.attempts)] = row
    return done


async def set_auto_title(session: AsyncSession, room_id: int, title: str) -> bool:
    """Name a room still auto-titled; whether it was."""
    changed = await session.execute(_TITLE, {"room_id": room_id, "title": title})
    return bool(changed.rowcount)  # type: ignore[attr-defined]


async def requeue_stuck_replies(
    session: AsyncSession, *, now: datetime, cutoff: datetime, queued_before: datetime | None
) -> tuple[list[tuple[int, int]], list[int]]:
    """Put back in `queued` the replies untouched since `cutoff` in `queued` or `generating`
    (a queued one only if also last queued before `queued_before`, when given): their (id,
    room id) and the owners of their rooms."""
    queued, generating = ReplyStatus.QUEUED, ReplyStatus.GENERATING
    stuck: ColumnElement[bool] = Message.status.in_([queued, generating])
    if queued_before is not None and queued_before < cutoff:
        stuck = or_(
            Message.status == generating,
            and_(Message.status == queued, Message.updated_at < queued_before),
        )
    stale = (
        await session.execute(
            update(Message)
            .where(Message.role == "assistant", stuck, Message.updated_at < cutoff)
            .values(status=queued, updated_at=now)
            .returning(Message.id, Message.chatroom_id)
        )
    ).all()
    if not stale:
        return [], []
    rooms = {room_id for _, room_id in stale}
    owners = await session.execute(
        select(Chatroom.user_id).where(Chatroom.id.in_(rooms)).distinct()
    )
    return [(reply_id, room_id) for reply_id, room_id in stale], list(owners.scalars())


# --- the statements that differ between the two databases ---------------------------------


class InsertExchange(Protocol):
    async def __call__(
        self,
        session: AsyncSession,
        slot: dict[str, Any],
        *,
        room_id: int,
        now: datetime,
        content: str | None = None,
        parent_id: int | None = None,
        reply_to: int | None = None,
    ) -> Exchange | None:
        """Take a quota slot and, if it was taken, insert the user message `content` following
        `parent_id` (or, for a retry, none: the reply answers `reply_to`) and a queued reply,
        and move the room's counters and active leaf (to the reply). The caller has locked
        the room (`lock_room`). None when the slot was not taken (nothing is written). `slot` is
        Quota.slot_params(...); the caller judges the count (Quota.admit) and rolls back on a
        refusal."""


class ClaimReplies(Protocol):
    async def __call__(
        self,
        session: AsyncSession,
        *,
        reply_ids: Sequence[int],
        now: datetime,
        model: str,
        context_tokens: int,
    ) -> dict[int, ClaimedReply]:
        """Take the queued replies among `reply_ids` (those not queued are left out) and read
        each one's room and conversation, in an autocommit session: the claims are committed
        before the reads (on PostgreSQL, in the same statement). A conversation ends past the
        message whose text alone spends `context_tokens`."""


class FinishReplies(Protocol):
    async def __call__(
        self, session: AsyncSession, finishes: Sequence[dict[str, Any]], now: datetime
    ) -> dict[tuple[int, int], Row[Any]]:
        """finish_reply for each of `finishes` (its params without `now`), in an autocommit
        session: the rows written, by (reply id, attempt); an attempt taken over is left out."""


@dataclass(frozen=True, slots=True)
class ChatStatements:
    """The chat domain's statements for one database, chosen once by services.py: the domain
    code never asks which database it runs on."""

    insert_exchange: InsertExchange
    claim_replies: ClaimReplies
    finish_replies: FinishReplies
    claim_key: Any  # the idempotency key's INSERT ... ON CONFLICT DO NOTHING RETURNING id
    # PostgreSQL: a send without a key is ONE statement on a Core connection
    # (`send_to_owned_room`); SQLite runs it in a session like any other send.
    one_statement_send: bool


POSTGRESQL = ChatStatements(
    insert_exchange=_insert_exchange_postgresql,
    claim_replies=_claim_replies_postgresql,
    finish_replies=_finish_replies_postgresql,
    claim_key=_claim_key(postgresql.insert),
    one_statement_send=True,
)
SQLITE = ChatStatements(
    insert_exchange=_insert_exchange_sqlite,
    claim_replies=_claim_replies_sqlite,
    finish_replies=_finish_replies_sqlite,
    claim_key=_claim_key(sqlite.insert),
    one_statement_send=False,
)
