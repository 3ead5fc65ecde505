"""GET /search in both modes: what it finds (completed replies, room names, every branch), for
whom (only the caller), how it ranks (an exact phrase first), how it marks (everything but the
marks escaped), what it refuses (hostile queries: 200 or 422, never a 5xx), how it stays current
(a rename, a delete, a finished reply) and how its pages cover the results."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gemini_backend.chat.models import Message
from tests.helpers import bearer, read_sse, sign_in


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"basic_daily_limit": 100, "send_per_minute": 100}


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def new_room(client: httpx.AsyncClient, auth: dict[str, str], name: str = "talk") -> int:
    response = await client.post("/chatroom", json={"name": name}, headers=auth)
    assert response.status_code == 201, response.text
    room_id: int = response.json()["id"]
    return room_id


async def exchange(client, auth, room_id: int, content: str) -> dict[str, Any]:
    """Send `content` and wait for its reply: the receipt with the reply's final text."""
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    receipt: dict[str, Any] = response.json()
    events = await read_sse(client, receipt["stream_url"], auth)
    assert events[-1][1] == "done", events
    receipt["reply"] = json.loads(events[-1][2])
    return receipt


async def search(client, auth, q: str, **params: Any) -> dict[str, Any]:
    response = await client.get("/search", params={"q": q, **params}, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def message_ids(page: dict[str, Any]) -> list[int | None]:
    return [result["message_id"] for result in page["results"]]


async def test_a_reply_is_found_once_it_completes(client, alice):
    room = await new_room(client, alice)
    receipt = await exchange(client, alice, room, "Tell me about zebras")
    found = await search(client, alice, "demo")  # a word of the demo model's reply only
    assert message_ids(found) == [receipt["reply_id"]]
    hit = found["results"][0]
    assert hit["role"] == "assistant"
    assert hit["chatroom_id"] == room
    assert hit["chatroom_name"] == "talk"
    assert "<mark>Demo</mark>" in hit["snippet"]
    assert hit["created_at"] == receipt["reply"]["created_at"]
    assert found["next_cursor"] is None
    both = await search(client, alice, "zebras")
    assert set(message_ids(both)) == {receipt["message_id"], receipt["reply_id"]}
    roles = {r["message_id"]: r["role"] for r in both["results"]}
    assert roles[receipt["message_id"]] == "user"


async def test_only_completed_messages_are_found(app, client, alice):
    room = await new_room(client, alice)
    receipt = await exchange(client, alice, room, "first question")
    sessions = app.state.services.database.sessionmaker
    async with sessions() as session:
        await session.execute(
            update(Message)
            .where(Message.id == receipt["reply_id"])
            .values(status="failed", content="partial pangolin text")
        )
        await session.commit()
    assert (await search(client, alice, "pangolin"))["results"] == []
    async with sessions() as session:  # as the worker's finish writes it
        await session.execute(
            update(Message)
            .where(Message.id == receipt["reply_id"])
            .values(status="completed", content="a finished pangolin reply")
        )
        await session.commit()
    assert message_ids(await search(client, alice, "pangolin")) == [receipt["reply_id"]]


async def test_an_exact_phrase_ranks_above_scattered_words(client, alice):
    room = await new_room(client, alice)
    scattered = await exchange(client, alice, room, "brown bears are quick to anger, a fox is not")
    phrase = await exchange(client, alice, room, "I saw a quick brown fox today")
    found = await search(client, alice, "quick brown fox")
    ids = message_ids(found)
    # The demo reply quotes the question: each exchange matches twice.
    assert set(ids[:2]) == {phrase["message_id"], phrase["reply_id"]}
    assert set(ids[2:]) == {scattered["message_id"], scattered["reply_id"]}
    quoted = await search(client, alice, '"quick brown fox"')
    assert set(message_ids(quoted)) == {phrase["message_id"], phrase["reply_id"]}


async def test_two_users_with_the_same_words_see_only_their_own(client, alice):
    bob = bearer(await sign_in(client))
    alice_room = await new_room(client, alice, "capybara club")
    bob_room = await new_room(client, bob, "capybara club")
    mine = await exchange(client, alice, alice_room, "capybara facts please")
    theirs = await exchange(client, bob, bob_room, "capybara facts please")
    for auth, own, room in ((alice, mine, alice_room), (bob, theirs, bob_room)):
        found = await search(client, auth, "capybara")
        assert {r["chatroom_id"] for r in found["results"]} == {room}
        assert set(message_ids(found)) == {own["message_id"], own["reply_id"], None}


async def test_html_in_content_is_escaped_in_snippets(client, alice):
    room = await new_room(client, alice, "<i>okapi</i> & co")
    hostile = '<script>alert("x")</script> okapi <b>bold</b> 1 < 2 &amp; \ue000fake\ue001 mark'
    receipt = await exchange(client, alice, room, hostile)
    found = await search(client, alice, "okapi")
    snippets = {r["message_id"]: r["snippet"] for r in found["results"]}
    assert set(snippets) == {receipt["message_id"], receipt["reply_id"], None}
    for snippet in snippets.values():
        assert "<script" not in snippet
        assert "<b>" not in snippet
        assert "<i>" not in snippet
        assert snippet.count("<mark>") == snippet.count("</mark>") == 1
        assert "<mark>okapi</mark>" in snippet
    own = snippets[receipt["message_id"]]
    # PostgreSQL's highlighter leaves HTML tags out of a snippet; SQLite's keeps them, escaped.
    assert "&lt; 2" in own
    assert "&amp;amp;" in own
    assert "fake" in own
    assert snippets[None] == "&lt;i&gt;<mark>okapi</mark>&lt;/i&gt; &amp; co"


HOSTILE = [
    '"',
    '""',
    '"unclosed phrase',
    "NEAR(",
    "NEAR(a b, 2)",
    "*",
    "walrus*",
    "-",
    "-walrus",
    "AND",
    "OR",
    "walrus OR",
    "NOT walrus",
    "a AND OR NOT b",
    "^walrus",
    "content:walrus",
    "(",
    ")",
    "{walrus}",
    "'; DROP TABLE messages; --",
    "\\",
    "!walrus & | <-> :*",
    "🦭 walrus",
    "walrus " * 70,
    "   ",
]


async def test_hostile_queries_are_searches(client, alice):
    room = await new_room(client, alice)
    receipt = await exchange(client, alice, room, "the walrus said AND NEAR")
    for q in HOSTILE:
        response = await client.get("/search", params={"q": q}, headers=alice)
        assert response.status_code == 200, (q, response.text)
        assert set(response.json()) == {"results", "next_cursor"}
    for q in ("NEAR( walrus", '"walrus', "walrus*", "^walrus", "said AND", "walrus or tusk"):
        found = await search(client, alice, q)
        assert receipt["message_id"] in message_ids(found), q
    assert receipt["message_id"] not in message_ids(await search(client, alice, "said -walrus"))


@pytest.mark.parametrize(
    "params",
    [
        {"q": ""},
        {"q": "walrus\x00"},
        {"q": "w" * 10_000},
        {"q": "walrus " * 1500},
        {},
        {"q": "walrus", "limit": 0},
        {"q": "walrus", "limit": 51},
        {"q": "walrus", "cursor": "x" * 201},
    ],
)
async def test_malformed_searches_are_422(client, alice, params):
    response = await client.get("/search", params=params, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        base64.urlsafe_b64encode(b"[1.0, 0]").decode(),
        base64.urlsafe_b64encode(b"[1.0, 7, 3]").decode(),
        base64.urlsafe_b64encode(b'["a", 0, 3]').decode(),
        base64.urlsafe_b64encode(b"[1e999, 0, 3]").decode(),
        base64.urlsafe_b64encode(b"[1.0, 0, 9223372036854775808]").decode(),
        base64.urlsafe_b64encode(b"[true, 0, 3]").decode(),
        base64.urlsafe_b64encode(b"[1.0, true, 3]").decode(),
        base64.urlsafe_b64encode(b'{"rank": 1}').decode(),
    ],
)
async def test_a_cursor_the_server_did_not_issue_is_400(client, alice, cursor):
    response = await client.get("/search", params={"q": "x", "cursor": cursor}, headers=alice)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_cursor"


async def test_a_cursor_beyond_every_rank_is_a_page_like_any_other(client, alice):
    for rank in (b"1e300", b"-1e300", b"0"):
        cursor = base64.urlsafe_b64encode(b"[" + rank + b", 1, 3]").decode()
        found = await search(client, alice, "walrus", cursor=cursor)
        assert found == {"results": [], "next_cursor": None}


async def test_search_needs_a_token(client):
    response = await client.get("/search", params={"q": "walrus"})
    assert response.status_code == 401


async def test_renames_and_deletes_are_reflected_at_once(client, alice):
    room = await new_room(client, alice, "aardvark notes")
    receipt = await exchange(client, alice, room, "numbat habitat")
    assert [
        (r["chatroom_id"], r["message_id"])
        for r in (await search(client, alice, "aardvark"))["results"]
    ] == [(room, None)]
    renamed = await client.patch(f"/chatroom/{room}", json={"name": "quokka notes"}, headers=alice)
    assert renamed.status_code == 200
    assert (await search(client, alice, "aardvark"))["results"] == []
    found = await search(client, alice, "quokka")
    assert [(r["chatroom_name"], r["message_id"]) for r in found["results"]] == [
        ("quokka notes", None)
    ]
    hits = await search(client, alice, "numbat")
    assert {r["chatroom_name"] for r in hits["results"]} == {"quokka notes"}
    assert set(message_ids(hits)) == {receipt["message_id"], receipt["reply_id"]}
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    assert (await search(client, alice, "numbat"))["results"] == []
    assert (await search(client, alice, "quokka"))["results"] == []


async def test_every_version_of_an_edited_message_is_found(client, alice):
    room = await new_room(client, alice)
    first = await exchange(client, alice, room, "about the tapir")
    edited = await client.post(
        f"/chatroom/{room}/messages/{first['message_id']}/edit",
        json={"content": "about the tapir and the margay"},
        headers=alice,
    )
    assert edited.status_code == 202, edited.text
    second = edited.json()
    await read_sse(client, second["stream_url"], alice)
    tapir = set(message_ids(await search(client, alice, "tapir")))
    assert tapir == {
        first["message_id"],
        first["reply_id"],
        second["message_id"],
        second["reply_id"],
    }
    margay = set(message_ids(await search(client, alice, "margay")))
    assert margay == {second["message_id"], second["reply_id"]}


async def test_pages_cover_every_result_once(client, alice):
    room = await new_room(client, alice, "walrus room")
    for n in range(6):
        await exchange(client, alice, room, f"walrus number {n} " + "and more words " * n)
    whole = await search(client, alice, "walrus", limit=50)
    assert len(whole["results"]) == 13
    assert whole["next_cursor"] is None
    seen: list[Any] = []
    cursor = None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = await search(client, alice, "walrus", **params)
        assert len(page["results"]) <= 4
        seen += [(r["chatroom_id"], r["message_id"]) for r in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [(r["chatroom_id"], r["message_id"]) for r in whole["results"]]
    assert len(set(seen)) == 13
