"""Reads answered before routing from memory (chat.fastpath): the same answers as the routes,
and never one the routes would not give."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from gemini_backend.chat import reads
from gemini_backend.chat.fastpath import LIST_PATH, ROOM_ROUTE
from gemini_backend.chat.router import get_chatroom, list_chatrooms
from gemini_backend.core.db import MAX_ID
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


async def requests_counted(client, route: str, method: str = "GET", status: int = 200) -> int:
    text = (await client.get("/metrics")).text
    pattern = (
        rf'http_requests_total\{{method="{method}",route="{re.escape(route)}",'
        rf'status="{status}"\}} (\S+)'
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


# --- the fast path and the routes agree (chat/reads.py holds the rules of both) ------------

MARKER = 2**62  # a user id no test has


async def notices_delivered(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the change notices published so far have reached this process (production): a
    notice published now arrives after them (one subscription, in order), so a request after
    this finds in memory what the test put there."""
    if services.settings.is_production_mode:
        principals, rooms = services.principals, services.chatroom_cache
        await marker_delivered(principals, principals.invalidate, monkeypatch)
        await marker_delivered(rooms, rooms.room_changed, monkeypatch)


async def marker_delivered(cache: Any, tell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    arrived = asyncio.Event()
    seen = 0
    forget = cache.forget

    def watching(user_id: int) -> None:
        nonlocal seen
        forget(user_id)
        seen += user_id == MARKER
        if seen == 2:  # here at once, then from the subscription
            arrived.set()

    monkeypatch.setattr(cache, "forget", watching)
    await tell(MARKER)
    await asyncio.wait_for(arrived.wait(), 10)
    monkeypatch.setattr(cache, "forget", forget)


class KeySpy:
    """The cache keys each side asks for, per request: the routes' (`lookup`, `room_lookup`:
    only the routes call them) and the fast path's (its peeks, outside those)."""

    def __init__(self, cache: Any, user_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self._cache, self._user_id = cache, user_id
        self.route: list[Any] = []
        self.early: list[Any] = []
        self._in_route = False
        lookup, room_lookup = cache.lookup, cache.room_lookup

        async def route_list(user_id: int, page: str) -> Any:
            self.route.append(page)
            self._in_route = True
            try:
                return await lookup(user_id, page)
            finally:
                self._in_route = False

        def route_room(user_id: int, room_id: int) -> Any:
            self.route.append(room_id)
            self._in_route = True
            try:
                return room_lookup(user_id, room_id)
            finally:
                self._in_route = False

        def spied(peek: Any) -> Any:
            def early(user_id: int, key: Any) -> Any:
                if not self._in_route:
                    self.early.append(key)
                return peek(user_id, key)

            return early

        monkeypatch.setattr(cache, "lookup", route_list)
        monkeypatch.setattr(cache, "room_lookup", route_room)
        monkeypatch.setattr(cache, "list_peek", spied(cache.list_peek))
        monkeypatch.setattr(cache, "room_peek", spied(cache.room_peek))

    def forget(self) -> None:
        """Empty the user's bodies in this process only (no notice), and the record."""
        self._cache.forget(self._user_id)
        self.take()

    def take(self) -> tuple[list[Any], list[Any]]:
        taken = self.route, self.early
        self.route, self.early = [], []
        return taken


class Reader:
    """Requests of alice's whose cache keys are recorded: `first` goes to the route (nothing in
    memory), `again` repeats it. `{cursor}` and `{room}` in a URL are a real cursor and room."""

    def __init__(self, client: Any, alice: dict[str, str], spy: KeySpy, **values: Any) -> None:
        self._client, self._alice, self._spy, self._values = client, alice, spy, values

    async def first(self, url: str) -> tuple[Any, list[Any], list[Any]]:
        self._spy.forget()
        return await self.again(url)

    async def again(self, url: str) -> tuple[Any, list[Any], list[Any]]:
        response = await self._client.get(url.format(**self._values), headers=self._alice)
        return (response, *self._spy.take())


@pytest.fixture
async def reader(app, client, alice, monkeypatch):
    """Three rooms, no notice pending, alice's principal in memory."""
    for name in ("a", "b", "c"):
        await client.post("/chatroom", json={"name": name}, headers=alice)
    page = (await client.get("/chatroom?limit=2", headers=alice)).json()
    services = app.state.services
    await notices_delivered(services, monkeypatch)
    user_id = (await client.get("/user/me", headers=alice)).json()["id"]
    spy = KeySpy(services.chatroom_cache, user_id, monkeypatch)
    return Reader(client, alice, spy, cursor=page["next_cursor"], room=page["chatrooms"][0]["id"])


async def check_agreement(reader: Any, url: str, status: int, early: bool) -> None:
    """The fast path asks for the key the route uses, or for none; never for one where the
    route refuses the request before its cache (route: []); and the plain forms are answered
    early, with the route's bytes."""
    first, route, fast = await reader.first(url)
    assert first.status_code == status, first.text
    assert fast in ([], route)
    again, route_again, fast_again = await reader.again(url)
    assert again.status_code == status
    if early:
        assert (route_again, fast_again) == ([], route)
        assert again.content == first.content
        assert without_varying(again.headers) == without_varying(first.headers)
    else:
        assert route_again == route
        assert fast_again in ([], route)


@pytest.mark.parametrize(
    ("query", "status", "early"),
    [
        ("", 200, True),
        ("limit=1", 200, True),
        ("limit=2", 200, True),
        ("limit=100", 200, True),
        ("cursor={cursor}", 200, True),
        ("limit=1&cursor={cursor}", 200, True),
        ("cursor={cursor}&limit=1", 200, True),
        ("limit=0", 422, False),
        ("limit=101", 422, False),
        ("limit=-1", 422, False),
        ("limit=abc", 422, False),
        ("limit=", 422, False),
        ("limit=05", 200, False),
        ("limit=%35", 200, False),
        ("limit=1&limit=2", 200, False),
        ("cursor={cursor}&cursor={cursor}", 200, False),
        ("limit=1&", 200, False),
        ("x=1", 200, False),
        ("limit=1&x=1", 200, False),
        ("cursor=", 200, False),
        ("cursor=AAAA", 400, False),
        ("cursor=" + "A" * reads.CURSOR_MAX_LENGTH, 400, False),
        ("cursor=" + "A" * (reads.CURSOR_MAX_LENGTH + 1), 422, False),
        ("cursor=%21%21", 400, False),
    ],
)
async def test_the_fast_path_takes_the_list_routes_key_or_none(reader, query, status, early):
    await check_agreement(reader, f"/chatroom?{query}", status, early)


@pytest.mark.parametrize(
    ("path", "status", "early"),
    [
        ("/chatroom/{room}", 200, True),
        ("/chatroom/{room}?x=1", 200, False),
        ("/chatroom/0{room}", 200, False),
        ("/chatroom/{room}/", 200, True),  # the slash is dropped before both
        (f"/chatroom/{MAX_ID}", 404, False),
        (f"/chatroom/{MAX_ID + 1}", 422, False),
        ("/chatroom/0", 422, False),
        ("/chatroom/-1", 422, False),
        ("/chatroom/1e3", 422, False),
    ],
)
async def test_the_fast_path_takes_the_room_routes_key_or_none(reader, path, status, early):
    await check_agreement(reader, path, status, early)


async def test_the_routes_document_the_shared_rules(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    listing = {p["name"]: p for p in paths["/chatroom"]["get"]["parameters"]}
    assert set(listing) == {"limit", "cursor"}  # the names chat.reads reads
    limit, cursor = listing["limit"]["schema"], listing["cursor"]["schema"]
    assert (limit["default"], limit["minimum"], limit["maximum"]) == (
        reads.DEFAULT_LIMIT,
        reads.MIN_LIMIT,
        reads.MAX_LIMIT,
    )
    assert {"type": "string", "maxLength": reads.CURSOR_MAX_LENGTH} in cursor["anyOf"]
    [room] = paths["/chatroom/{chatroom_id}"]["get"]["parameters"]
    assert (room["in"], room["schema"]["minimum"], room["schema"]["maximum"]) == (
        "path",
        reads.MIN_ID,
        MAX_ID,
    )


def test_the_fast_paths_paths_are_the_routes(app):
    routes = {
        route.path: route.endpoint
        for route in app.routes
        if "GET" in (getattr(route, "methods", None) or ())
    }
    assert routes[LIST_PATH] is list_chatrooms
    assert routes[ROOM_ROUTE] is get_chatroom
