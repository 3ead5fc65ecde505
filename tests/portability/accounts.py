"""Steps and checks the account-deletion tests share: a user with something of everything,
and the scan of every table for what names them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select, text

from gemini_backend.models import metadata
from tests.attachments import files
from tests.chat.trees import Chat
from tests.helpers import bearer, new_number, request_otp

PASSWORD = "violet-harbour-42"


@dataclass
class Account:
    number: str
    tokens: dict[str, Any]
    chat: Chat
    rooms: list[int] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.tokens["user"]["id"])

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.tokens)


async def with_password(client: httpx.AsyncClient) -> Account:
    """A user who signed up with a password and activated it with their first code."""
    number = new_number()
    signup = await client.post("/auth/signup", json={"mobile_number": number, "password": PASSWORD})
    assert signup.status_code == 201, signup.text
    otp = await request_otp(client, number)
    verified = await client.post(
        "/auth/verify-otp", json={"mobile_number": number, "otp": otp, "password": PASSWORD}
    )
    assert verified.status_code == 200, verified.text
    tokens = verified.json()
    assert tokens["user"]["has_password"]
    return Account(number, tokens, Chat(client, bearer(tokens)))


async def fill(account: Account) -> None:
    """Two rooms with replies, an attachment sent, a branch, a share link and an
    Idempotency-Key: a row in every table a user can own."""
    chat = account.chat
    client = chat.client
    first = await chat.room("first room")
    second = await chat.room("second room")
    account.rooms += [first, second]
    exchange = await chat.exchange(first, "hello")
    account.message_ids += [exchange["message_id"], exchange["reply_id"]]
    edited = await chat.accepted(await chat.edit(first, exchange["message_id"], "hello, edited"))
    account.message_ids += [edited["message_id"], edited["reply_id"]]
    uploaded = await client.post(
        f"/chatroom/{second}/attachments",
        files={"file": ("notes.txt", b"my private notes\n", "text/plain")},
        headers=account.auth,
    )
    assert uploaded.status_code == 201, uploaded.text
    sent = await client.post(
        f"/chatroom/{second}/message",
        json={"content": "read this", "attachment_ids": [uploaded.json()["id"]]},
        headers={**account.auth, "Idempotency-Key": f"key-{account.id}"},
    )
    receipt = await chat.accepted(sent)
    account.message_ids += [receipt["message_id"], receipt["reply_id"]]
    unsent = await client.post(
        f"/chatroom/{second}/attachments",
        files={"file": ("picture.png", files.png(), "image/png")},
        headers=account.auth,
    )
    assert unsent.status_code == 201, unsent.text
    share = await client.post(f"/chatroom/{first}/share", json={}, headers=account.auth)
    assert share.status_code == 201, share.text


def _names_user(table: Any, row: Any, user_id: int) -> list[str]:
    found = []
    for column in table.columns:
        refers = any(fk.column.table.name == "users" for fk in column.foreign_keys)
        is_user_key = table.name == "users" and column.name == "id"
        if (refers or is_user_key) and row._mapping[column.name] == user_id:
            found.append(column.name)
    return found


async def scan(app: Any, account: Account) -> list[str]:
    """Every row of every table that names the user: their id in a column that refers to
    users, their number anywhere (digits, with or without the +), one of their rooms or
    messages by id."""
    digits = account.number.lstrip("+")
    rooms, messages = set(account.rooms), set(account.message_ids)
    problems = []
    async with app.state.services.database.sessionmaker() as session:
        for table in metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                values = json.dumps([str(v) for v in row], default=str)
                where = f"{table.name}: {dict(row._mapping)}"
                if (
                    _names_user(table, row, account.id)
                    or digits in values
                    or (table.name == "chatrooms" and row._mapping["id"] in rooms)
                    or (table.name == "messages" and row._mapping["id"] in messages)
                ):
                    problems.append(where)
        problems += await _search_index_rows(session, rooms, messages)
    return problems


async def _search_index_rows(session: Any, rooms: set[int], messages: set[int]) -> list[str]:
    """SQLite's FTS5 tables hold copies of the text outside the metadata's tables (on
    PostgreSQL the search vectors are columns of the rows scanned above)."""
    if session.bind.dialect.name != "sqlite":
        return []
    found = []
    for table, ids in (("message_search", messages), ("chatroom_search", rooms)):
        rowids = (await session.execute(text(f"SELECT rowid FROM {table}"))).scalars()  # noqa: S608
        found += [f"{table}: rowid {rowid}" for rowid in rowids if rowid in ids]
    return found
