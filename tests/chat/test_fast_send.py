"""The plain send answered before routing (chat.fastpath): the route's answer, its errors and
its accounting, and the route itself for every request the fast path does not take."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gemini_backend.chat.fastpath import SEND_ROUTE
from tests.chat.test_cached_reads import requests_counted, without_varying
from tests.helpers import bearer, sign_in


@pytest.fixture
async def alice(app, client) -> dict[str, str]:
    if app.state.services.settings.is_production_mode:
        await app.state.services.principals.wait_subscribed()
    headers = bearer(await sign_in(client))
    assert (await client.get("/user/me", headers=headers)).status_code == 200  # in memory now
    return headers


@pytest.fixture
async def room(client, alice) -> int:
    response = await client.post("/chatroom", json={"name": "r"}, headers=alice)
    room_id: int = response.json()["id"]
    return room_id


@contextmanager
def route_calls(app: Any) -> Iterator[list[int]]:
    """The requests the send's route was handed (before its own validation): what the fast
    path answered never gets there."""
    (route,) = [
        r for r in app.routes if getattr(r, "path", None) == SEND_ROUTE and "POST" in r.methods
    ]
    calls: list[int] = []
    original = route.handle

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await original(scope, receive, send)

    route.handle = counted
    try:
        yield calls
    finally:
        del route.handle


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length: the fast path leaves it to the route."""
    yield body


async def via_route(client, url: str, body: bytes, headers: dict[str, str]) -> Any:
    sent = {**headers, "Content-Type": "application/json"}
    return await client.post(url, content=chunked(body), headers=sent)


async def via_fast_path(client, url: str, body: bytes, headers: dict[str, str]) -> Any:
    return await client.post(
        url, content=body, headers={**headers, "Content-Type": "application/json"}
    )


def shape(value: Any) -> Any:
    """A JSON value with its scalars replaced by their types: the receipt's form, not its ids."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


async def test_a_plain_send_is_answered_before_routing_as_the_route_answers(
    app, client, alice, room
):
    url, body = f"/chatroom/{room}/message", json.dumps({"content": "Hello there"}).encode()
    assert (await via_route(client, url, b'{"content": "first"}', alice)).status_code == 202
    with route_calls(app) as calls:
        by_route = await via_route(client, url, body, alice)
        assert calls == [1]
        fast = await via_fast_path(client, url, body, alice)
        assert calls == [1]
    assert (fast.status_code, by_route.status_code) == (202, 202)
    assert list(fast.headers.keys()) == list(by_route.headers.keys())
    for name in ("content-type", "x-ratelimit-limit", "x-ratelimit-reset", "x-frame-options"):
        assert fast.headers[name] == by_route.headers[name]
    remaining = int(by_route.headers["x-ratelimit-remaining"])
    assert int(fast.headers["x-ratelimit-remaining"]) == remaining - 1
    receipt, routes = fast.json(), by_route.json()
    assert list(receipt) == list(routes)  # FastAPI's field order, aliases and all
    assert shape(receipt) == shape(routes)
    assert receipt["user_message"]["content"] == "Hello there"
    assert receipt["user_message"]["parent_id"] == routes["reply_id"]  # after the route's reply
    assert receipt["stream_url"] == f"/chatroom/{room}/messages/{receipt['reply_id']}/stream"
    stored = await client.get(f"/chatroom/{room}/messages/{receipt['reply_id']}", headers=alice)
    assert stored.status_code == 200
    assert stored.json()["reply_to"] == receipt["message_id"]
    usage = (await client.get("/chatroom/usage", headers=alice)).json()
    assert usage["used_today"] == 3


async def test_a_fast_send_is_counted_under_its_route(app, client, alice, room):
    url, body = f"/chatroom/{room}/message", b'{"content": "hi"}'
    before = await requests_counted(client, SEND_ROUTE, "POST", 202)
    with route_calls(app) as calls:
        assert (await via_fast_path(client, url, body, alice)).status_code == 202
    assert calls == []
    assert await requests_counted(client, SEND_ROUTE, "POST", 202) == before + 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"content": "   "}', 422, "validation_error"),
        (b'{"content": 5}', 422, "validation_error"),
        (b'{"content": "x", "parent_id": 0}', 422, "validation_error"),
        (b"[]", 422, "validation_error"),
        (b"", 422, "validation_error"),
        (b'{"content": "unterminated', 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
    ],
)
async def test_a_body_the_model_refuses_gets_the_routes_own_error(
    app, client, alice, room, body, status, code
):
    url = f"/chatroom/{room}/message"
    with route_calls(app) as calls:
        fast = await via_fast_path(client, url, body, alice)
        assert calls == [1]  # replayed to the route, which refused it
    routes = await via_route(client, url, body, alice)
    assert (fast.status_code, fast.json()["code"]) == (status, code)
    assert fast.json() == routes.json()
    usage = (await client.get("/chatroom/usage", headers=alice)).json()
    assert usage["used_today"] == 0


async def test_the_senders_refusals_are_answered_as_the_app_answers_them(app, client, alice, room):
    too_long = json.dumps({"content": "x" * (app.state.services.settings.max_message_chars + 1)})
    cases = [
        (f"/chatroom/{room}/message", too_long.encode(), 422, "message_too_long"),
        ("/chatroom/999999/message", b'{"content": "hi"}', 404, "chatroom_not_found"),
    ]
    with route_calls(app) as calls:
        for url, body, status, code in cases:
            fast = await via_fast_path(client, url, body, alice)
            routes = await via_route(client, url, body, alice)
            assert (fast.status_code, fast.json()["code"]) == (status, code)
            assert (fast.json(), fast.status_code) == (routes.json(), routes.status_code)
            assert without_varying(fast.headers) == without_varying(routes.headers)
        assert len(calls) == len(cases)  # only the chunked ones


async def test_the_daily_limit_refuses_a_fast_send_with_the_routes_headers(
    app, client, alice, room
):
    url, body = f"/chatroom/{room}/message", b'{"content": "hi"}'
    limit = app.state.services.settings.basic_daily_limit
    for _ in range(limit):
        assert (await via_fast_path(client, url, body, alice)).status_code == 202
    fast = await via_fast_path(client, url, body, alice)
    routes = await via_route(client, url, body, alice)
    assert (fast.status_code, fast.json()["code"]) == (429, "daily_limit_reached")
    assert fast.json() == routes.json()
    assert without_varying(fast.headers) == without_varying(routes.headers)
    assert int(fast.headers["retry-after"]) > 0
    assert fast.headers["x-ratelimit-remaining"] == "0"


async def test_an_idempotency_key_replays_the_receipt_through_the_fast_path(
    app, client, alice, room
):
    url, body = f"/chatroom/{room}/message", b'{"content": "once"}'
    keyed = {**alice, "Idempotency-Key": "k-1"}
    with route_calls(app) as calls:
        first = await via_fast_path(client, url, body, keyed)
        again = await via_fast_path(client, url, body, keyed)
        other = await via_fast_path(client, url, b'{"content": "another"}', keyed)
        assert calls == []
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    page = (await client.get(f"/chatroom/{room}/messages", headers=alice)).json()
    assert [m["content"] for m in page["messages"] if m["role"] == "user"] == ["once"]


@pytest.mark.parametrize(
    "variant",
    ["query", "not-json", "two-types", "no-principal", "no-token", "odd-id", "chunked"],
)
async def test_anything_but_the_plain_form_goes_to_the_route(app, client, alice, room, variant):
    url, body = f"/chatroom/{room}/message", b'{"content": "hi"}'
    headers = {**alice, "Content-Type": "application/json"}
    content: Any = body
    expected = 202
    if variant == "query":
        url += "?x=1"
    elif variant == "not-json":
        headers["Content-Type"] = "text/plain"
        expected = 415
    elif variant == "two-types":  # the first one counts, as the route reads it
        headers = {**alice}
        content = body
        extra = [("Content-Type", "text/plain"), ("Content-Type", "application/json")]
        with route_calls(app) as calls:
            response = await client.post(url, content=content, headers=[*headers.items(), *extra])
        assert (response.status_code, calls) == (415, [1])
        return
    elif variant == "no-principal":
        headers = {**bearer(await sign_in(client)), "Content-Type": "application/json"}
        expected = 404  # the room is alice's
    elif variant == "no-token":
        del headers["Authorization"]
        expected = 401
    elif variant == "odd-id":
        url = f"/chatroom/0{room}/message"
    elif variant == "chunked":
        content = chunked(body)
    with route_calls(app) as calls:
        response = await client.post(url, content=content, headers=headers)
    assert response.status_code == expected, response.text
    assert calls == [1]


async def test_a_client_that_leaves_mid_body_is_answered_by_the_route(app, client, alice, room):
    """The route's answer and its metrics label, as for a send the fast path never saw."""
    before = await requests_counted(client, SEND_ROUTE, "POST", 400)
    incoming = [
        {"type": "http.request", "body": b'{"content": "hel', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/chatroom/{room}/message",
        "raw_path": f"/chatroom/{room}/message".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", alice["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"40"),
        ],
        "client": ("198.51.100.7", 40000),
        "server": ("testserver", 80),
    }
    with route_calls(app) as calls:
        await app(scope, receive, send)
    assert calls == [1]
    assert sent[0]["status"] == 400
    assert await requests_counted(client, SEND_ROUTE, "POST", 400) == before + 1
    usage = (await client.get("/chatroom/usage", headers=alice)).json()
    assert usage["used_today"] == 0
