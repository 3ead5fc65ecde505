"""Reads answered before routing from memory (chat.fastpath): the same answers as the routes,
and never one the routes would not give."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gemini_backend.chat import reads
from tests.auth.test_principal_cache import counting_statements
from tests.helpers import bearer, sign_in


@pytest.fixture
async def tokens(app, client):
    if app.state.services.settings.is_production_mode:
        await app.state.services.principals.wait_subscribed()
        await app.state.services.chatroom_cache.wait_subscribed()
    return await sign_in(client)


@pytest.fixture
def alice(tokens):
    return bearer(tokens)


@pytest.fixture
async def room(client, alice):
    response = await client.post("/chatroom", json={"name": "r"}, headers=alice)
    return response.json()["id"]


def without_varying(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in {"x-request-id", "x-cache"}}


async def requests_counted(client, route: str) -> int:
    text = (await client.get("/metrics")).text
    pattern = (
        rf'http_requests_total\{{method="GET",route="{re.escape(route)}",status="200"\}} (\S+)'
    )
    found = re.search(pattern, text)
    return int(float(found.group(1))) if found else 0


@pytest.mark.parametrize("path", ["/chatroom", "/chatroom?limit=5", "/chatroom/{room}"])
async def test_an_answer_from_memory_is_the_routes_answer(app, client, alice, room, path):
    url = path.format(room=room)
    first = await client.get(url, headers=alice)  # the route: reads, fills the cache
    assert first.status_code == 200
    with counting_statements(app) as statements:
        again = await client.get(url, headers=alice)
    assert statements == []
    assert again.status_code == 200
    assert again.content == first.content
    assert without_varying(again.headers) == without_varying(first.headers)
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    if path.startswith("/chatroom?") or path == "/chatroom":
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")


async def test_answers_from_memory_are_counted_under_their_route(client, alice, room):
    await client.get("/chatroom", headers=alice)
    await client.get(f"/chatroom/{room}", headers=alice)
    lists, rooms = (
        await requests_counted(client, "/chatroom"),
        await requests_counted(client, "/chatroom/{chatroom_id}"),
    )
    for _ in range(3):
        assert (await client.get("/chatroom", headers=alice)).headers["x-cache"] == "HIT"
        assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 200
    assert await requests_counted(client, "/chatroom") == lists + 3
    assert await requests_counted(client, "/chatroom/{chatroom_id}") == rooms + 3


async def test_a_cursor_page_is_served_from_memory_too(client, alice):
    for name in ("a", "b", "c"):
        await client.post("/chatroom", json={"name": name}, headers=alice)
    first = (await client.get("/chatroom", params={"limit": 2}, headers=alice)).json()
    cursor = first["next_cursor"]
    page = await client.get("/chatroom", params={"limit": 2, "cursor": cursor}, headers=alice)
    again = await client.get("/chatroom", params={"limit": 2, "cursor": cursor}, headers=alice)
    assert again.headers["x-cache"] == "HIT"
    assert again.json() == page.json()
    assert [r["name"] for r in again.json()["chatrooms"]] == ["a"]


async def test_a_signed_out_session_is_refused_although_its_pages_are_in_memory(
    client, tokens, alice, room
):
    for url in ("/chatroom", f"/chatroom/{room}", "/chatroom", f"/chatroom/{room}"):
        assert (await client.get(url, headers=alice)).status_code == 200
    logout = await client.post(
        "/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=alice
    )
    assert logout.status_code == 204
    for url in ("/chatroom", f"/chatroom/{room}"):
        response = await client.get(url, headers=alice)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"


async def test_an_expired_token_is_refused_although_its_pages_are_in_memory(
    app, client, clock, alice, room
):
    for url in ("/chatroom", f"/chatroom/{room}", "/chatroom", f"/chatroom/{room}"):
        assert (await client.get(url, headers=alice)).status_code == 200
    clock.advance(app.state.services.settings.access_token_ttl_seconds + 1)
    for url in ("/chatroom", f"/chatroom/{room}"):
        response = await client.get(url, headers=alice)
        assert response.status_code == 401
        assert response.json()["code"] == "token_expired"


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Token x"]
)
async def test_no_valid_token_is_refused_as_by_the_routes(client, alice, room, authorization):
    await client.get("/chatroom", headers=alice)
    await client.get("/chatroom", headers=alice)
    for url in ("/chatroom", f"/chatroom/{room}"):
        response = await client.get(url, headers={"Authorization": authorization})
        assert response.status_code == 401
        assert response.json()["code"] in {"not_authenticated", "invalid_token"}


async def test_another_users_token_never_gets_a_body_in_memory(client, alice, room):
    for _ in range(2):
        assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 200
        alices = (await client.get("/chatroom", headers=alice)).json()
    bob = bearer(await sign_in(client))
    assert (await client.get(f"/chatroom/{room}", headers=bob)).status_code == 404
    bobs = await client.get("/chatroom", headers=bob)
    assert bobs.json()["chatrooms"] == [] != alices["chatrooms"]


@pytest.mark.parametrize(
    ("query", "status"),
    [("limit=0", 422), ("limit=101", 422), ("limit=abc", 422), ("cursor=%21%21", 400)],
)
async def test_a_query_the_route_refuses_is_refused(client, alice, query, status):
    await client.get("/chatroom", headers=alice)
    await client.get("/chatroom", headers=alice)
    response = await client.get(f"/chatroom?{query}", headers=alice)
    assert response.status_code == status
    assert "code" in response.json()


async def test_other_methods_and_odd_paths_go_to_the_routes(client, alice, room):
    await client.get(f"/chatroom/{room}", headers=alice)
    await client.get(f"/chatroom/{room}", headers=alice)
    assert (await client.get(f"/chatroom/{room}?x=1", headers=alice)).status_code == 200
    assert (await client.get("/chatroom/0", headers=alice)).status_code == 422
    assert (await client.get("/chatroom/007", headers=alice)).status_code in {200, 404}
    assert (await client.get(f"/chatroom/{room}/", headers=alice)).status_code == 200
    head = await client.head(f"/chatroom/{room}", headers=alice)
    assert head.status_code in {200, 405}


@pytest.mark.parametrize(
    ("query", "key"),
    [
        (b"", "20:"),
        (b"limit=5", "5:"),
        (b"limit=100&cursor=abc_-9", "100:abc_-9"),
        (b"cursor=abc&limit=7", "7:abc"),
        (b"limit=101", None),
        (b"limit=05", None),
        (b"limit=1&limit=2", None),
        (b"cursor=", None),
        (b"cursor=a%3D", None),
        (b"other=1", None),
        (b"limit", None),
    ],
)
def test_only_the_plain_query_forms_are_answered_from_memory(query, key):
    assert reads.page_key_of_query(query) == key
