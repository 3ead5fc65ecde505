"""Import through the public API, both modes: our own export comes back as the same tree (new
ids), ChatGPT's conversations.json (built here from the format's documented shape) as its
tree with the branch it showed, and malformed or hostile files are refused creating nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chat.trees import Chat
from tests.helpers import bearer, sign_in
from tests.portability.test_export import branched_room, export

LIFTED = {"basic_daily_limit": 1000, "send_per_minute": 1000, "import_max_bytes": 2_000_000}


@pytest.fixture
def settings_overrides():
    return LIFTED


@pytest.fixture
async def alice(client):
    return Chat(client, bearer(await sign_in(client)))


async def post_import(chat: Chat, body: Any, kind: str = "application/json"):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await chat.client.post(
        "/chatroom/import", content=content, headers={**chat.auth, "Content-Type": kind}
    )


async def room_ids(chat: Chat) -> list[int]:
    response = await chat.client.get("/chatroom", params={"limit": 100}, headers=chat.auth)
    return [room["id"] for room in response.json()["chatrooms"]]


def shape(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its ids replaced by positions: what a round trip must keep."""
    position = {m["id"]: i for i, m in enumerate(document["messages"])}
    kept = ("role", "content", "status", "model", "finish_reason")

    def parts(message):
        return [{k: v for k, v in p.items() if k != "attachment_id"} for p in message["parts"]]

    room = {k: v for k, v in document["chatroom"].items() if k not in ("id", "created_at")}
    room["active_leaf_id"] = position.get(room["active_leaf_id"])
    return {
        "chatroom": room,
        "messages": [
            {
                **{k: m[k] for k in kept},
                "parent": position.get(m["parent_id"]),
                "parts": parts(m),
                "created_at": m["created_at"],
            }
            for m in document["messages"]
        ],
    }


async def test_an_export_comes_back_as_the_same_tree(alice):
    room, _, _ = await branched_room(alice)
    original = (await export(alice, room)).json()
    response = await post_import(alice, original)
    assert response.status_code == 201, response.text
    [created] = response.json()["chatrooms"]
    assert created["id"] != room
    assert (created["name"], created["message_count"]) == ("Recipes", 6)
    again = (await export(alice, created["id"])).json()
    assert shape(again) == shape(original)
    assert not {m["id"] for m in again["messages"]} & {m["id"] for m in original["messages"]}
    assert again["attachments"] == []  # files are not imported, only named in the parts
    # The active branch is the same conversation, and the room works on from it.
    detail = await alice.detail(created["id"])
    assert [m["content"] for m in detail["messages"]] == [
        m["content"] for m in (await alice.detail(room))["messages"]
    ]
    reply = await alice.exchange(created["id"], "and then?")
    assert reply["final"]["status"] == "completed"


async def test_the_account_export_comes_back_whole(alice):
    for _ in range(2):
        await branched_room(alice)
    before = await room_ids(alice)
    exported = await alice.client.get("/user/export", headers=alice.auth)
    response = await post_import(alice, exported.content, "application/x-ndjson")
    assert response.status_code == 201, response.text
    created = [room["id"] for room in response.json()["chatrooms"]]
    assert len(created) == 2
    assert set(await room_ids(alice)) == set(before) | set(created)


async def test_imports_take_no_quota_and_generate_nothing(alice):
    document = {
        "format": "gemini-backend/chatroom",
        "version": 1,
        "chatroom": {"name": "Half done"},
        "messages": [
            {"id": 1, "parent_id": None, "role": "user", "content": "hello"},
            {"id": 2, "parent_id": 1, "role": "assistant", "content": "", "status": "queued"},
        ],
    }
    response = await post_import(alice, document)
    assert response.status_code == 201, response.text
    room = response.json()["chatrooms"][0]["id"]
    tree = await alice.tree(room)
    assert [m["status"] for m in tree["messages"]] == ["completed", "cancelled"]
    assert await alice.used_today() == 0


def chatgpt_export() -> list[dict[str, Any]]:
    """Two conversations in the documented shape of ChatGPT's conversations.json: a mapping of
    nodes (id, message with author.role and content.parts, parent, children) and current_node.
    The first has a hidden system node and an edited question (a branch); current_node is on
    the edit."""

    def node(key, parent, children, role=None, text=None, t=None):
        message = None
        if role is not None:
            message = {
                "id": key,
                "author": {"role": role, "name": None, "metadata": {}},
                "create_time": t,
                "content": {"content_type": "text", "parts": [text]},
                "status": "finished_successfully",
                "metadata": {},
            }
        return key, {"id": key, "message": message, "parent": parent, "children": children}

    first = dict(
        [
            node("root", None, ["sys"]),
            node("sys", "root", ["u1"], "system", ""),
            node("u1", "sys", ["a1"], "user", "Plan a day in Goa", 1_700_000_000.5),
            node("a1", "u1", ["u2", "u2b"], "assistant", "Beach, then fort.", 1_700_000_001),
            node("u2", "a1", ["a2"], "user", "And lunch?", 1_700_000_002),
            node("a2", "u2", [], "assistant", "Fish curry.", 1_700_000_003),
            node("u2b", "a1", ["a2b"], "user", "And dinner?", 1_700_000_004),
            node("a2b", "u2b", [], "assistant", "Shacks on the sand.", 1_700_000_005),
        ]
    )
    second = dict(
        [
            node("r", None, ["q"]),
            node("q", "r", ["a"], "user", "Hello", 1_700_000_100),
            node("a", "q", [], "assistant", "Hi! How can I help?", 1_700_000_101),
        ]
    )
    return [
        {"title": "Goa day", "create_time": 1_700_000_000, "mapping": first, "current_node": "a2b"},
        {"title": "Greeting", "mapping": second, "current_node": "a"},
    ]


async def test_a_chatgpt_export_imports_as_the_same_trees(alice):
    response = await post_import(alice, chatgpt_export())
    assert response.status_code == 201, response.text
    goa, greeting = response.json()["chatrooms"]
    assert (goa["name"], goa["message_count"]) == ("Goa day", 6)
    assert (greeting["name"], greeting["message_count"]) == ("Greeting", 2)
    tree = await alice.tree(goa["id"])
    by_content = {m["content"]: m for m in tree["messages"]}
    parent = {m["content"]: m["parent_id"] for m in tree["messages"]}
    ids = {content: m["id"] for content, m in by_content.items()}
    assert parent == {
        "Plan a day in Goa": None,  # the system node is left out: u1 is the root
        "Beach, then fort.": ids["Plan a day in Goa"],
        "And lunch?": ids["Beach, then fort."],
        "Fish curry.": ids["And lunch?"],
        "And dinner?": ids["Beach, then fort."],
        "Shacks on the sand.": ids["And dinner?"],
    }
    assert by_content["And dinner?"]["sibling_ids"] == [ids["And lunch?"], ids["And dinner?"]]
    assert tree["active_leaf_id"] == ids["Shacks on the sand."]
    detail = await alice.detail(goa["id"])
    assert [m["content"] for m in detail["messages"]] == [
        "Plan a day in Goa",
        "Beach, then fort.",
        "And dinner?",
        "Shacks on the sand.",
    ]
    assert detail["messages"][0]["created_at"] == "2023-11-14T22:13:20.500000Z"
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2


def chain(length: int) -> dict[str, Any]:
    mapping = {
        f"n{i}": {
            "message": {"author": {"role": "user"}, "content": {"parts": [f"m{i}"]}},
            "parent": f"n{i - 1}" if i else None,
            "children": [f"n{i + 1}"] if i < length - 1 else [],
        }
        for i in range(length)
    }
    return {"title": "deep", "mapping": mapping, "current_node": f"n{length - 1}"}


def with_cycle() -> dict[str, Any]:
    conversation = chatgpt_export()[0]
    conversation["mapping"]["u1"]["parent"] = "a2"  # a2 -> u2 -> a1 -> u1 -> a2
    return conversation


def with_missing_parent() -> dict[str, Any]:
    conversation = chatgpt_export()[0]
    conversation["mapping"]["u2"]["parent"] = "nobody"
    return conversation


def own(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": "gemini-backend/chatroom",
        "version": 1,
        "chatroom": {"name": "x"},
        "messages": messages,
    }


HOSTILE = {
    "a cycle": [with_cycle()],
    "a missing parent": [with_missing_parent()],
    "a branch 2001 deep": [chain(2001)],
    "a mapping that is a list": [{"title": "x", "mapping": [1, 2]}],
    "parts that are a string": [
        {"mapping": {"a": {"message": {"author": {"role": "user"}, "content": {"parts": "hi"}}}}}
    ],
    "a role that is a number": [{"mapping": {"a": {"message": {"author": {"role": 5}}}}}],
    "our format, a cycle": own(
        [
            {"id": 1, "parent_id": 2, "role": "user", "content": "a"},
            {"id": 2, "parent_id": 1, "role": "assistant", "content": "b"},
        ]
    ),
    "our format, a duplicate id": own(
        [{"id": 1, "role": "user", "content": "a"}, {"id": 1, "role": "user", "content": "b"}]
    ),
    "our format, a NUL character": own([{"id": 1, "role": "user", "content": "a\u0000b"}]),
    "our format, an unknown role": own([{"id": 1, "role": "system", "content": "a"}]),
    "our format, version 2": {**own([]), "version": 2},
    "something else": {"hello": "world"},
    "a list of numbers": [1, 2, 3],
    "an empty list": [],
    "a good room, then a bad one": [own([{"id": 1, "role": "user", "content": "ok"}]), [1]],
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_malformed_or_hostile_file_is_422_and_creates_nothing(alice, name):
    response = await post_import(alice, HOSTILE[name])
    assert (response.status_code, response.json()["code"]) == (422, "invalid_import"), response.text
    assert await room_ids(alice) == []


@pytest.mark.parametrize(
    ("body", "kind", "status", "code"),
    [
        (b"{not json", "application/json", 422, "invalid_import"),
        (b"\xff\xfe", "application/json", 422, "invalid_import"),
        (b"[]", "text/plain", 415, "unsupported_media_type"),
        (json.dumps(own([])).encode() + b"\n{", "application/x-ndjson", 422, "invalid_import"),
    ],
)
async def test_bodies_that_are_not_json(alice, body, kind, status, code):
    response = await post_import(alice, body, kind)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert await room_ids(alice) == []


async def test_too_many_nodes_or_bytes_is_413(alice):
    many = [{"title": "big", "mapping": {f"n{i}": {} for i in range(50_000)}}]
    response = await post_import(alice, many)
    assert (response.status_code, response.json()["code"]) == (413, "import_too_large")
    padded = own([{"id": 1, "role": "user", "content": "x" * 150_000}] * 14)
    response = await post_import(alice, padded)  # over 2 MB (IMPORT_MAX_BYTES here)
    assert response.status_code == 413
    assert await room_ids(alice) == []


async def test_an_unknown_model_is_refused_like_a_new_room(alice):
    document = own([{"id": 1, "role": "user", "content": "hi"}])
    document["chatroom"]["model"] = "no-such-model"
    response = await post_import(alice, document)
    assert (response.status_code, response.json()["code"]) == (422, "unknown_model")
    assert await room_ids(alice) == []


async def test_importing_needs_a_token(client):
    response = await client.post("/chatroom/import", json=[])
    assert response.status_code == 401


async def test_an_empty_room_imports_as_an_empty_room(alice):
    response = await post_import(alice, own([]))
    assert response.status_code == 201, response.text
    [room] = response.json()["chatrooms"]
    assert (room["name"], room["message_count"]) == ("x", 0)
    assert (await alice.tree(room["id"]))["messages"] == []
