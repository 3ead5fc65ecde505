"""The Postman collection covers the API: every route of the OpenAPI schema (except the built-in
Stripe mock's pages under /mock-stripe) has a request, and every request hits a route of the
schema (or a /mock-stripe route). `make postman` runs the collection against a real server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gemini_backend.config import DEV_WEBHOOK_SECRET, Settings
from gemini_backend.main import create_app

POSTMAN = Path(__file__).resolve().parents[1] / "postman"
COLLECTION = POSTMAN / "gemini-backend.postman_collection.json"
ENVIRONMENT = POSTMAN / "local.postman_environment.json"
MOCK_PREFIX = "/mock-stripe"
BASE = "{{baseUrl}}"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
FOLDERS = [
    "Auth",
    "User",
    "Chatrooms",
    "Messages",
    "Conversation trees",
    "Search",
    "Subscriptions",
    "Webhooks",
    "Attachments",
    "Operations",
]

VARIABLE = re.compile(r"^\{\{[^{}]+\}\}$")  # a Postman variable segment: {{chatroomId}}
PARAMETER = re.compile(r"^\{[^{}]+\}$")  # an OpenAPI path parameter: {chatroom_id}
PLACEHOLDER = "{}"

Route = tuple[str, str]  # (METHOD, path template)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _requests(
    items: list[dict[str, Any]], prefix: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in items:
        name = f"{prefix}{item['name']}"
        if "item" in item:
            yield from _requests(item["item"], f"{name} / ")
        else:
            yield name, item


def _segments(path: str) -> tuple[str, ...]:
    # Trailing slashes are accepted by the API, so they do not count.
    return tuple(segment for segment in path.strip("/").split("/") if segment)


def _request_segments(request: dict[str, Any]) -> tuple[str, ...]:
    url = request["url"]
    raw: str = url["raw"] if isinstance(url, dict) else url
    assert raw.startswith(BASE), f"{raw!r} does not start with {BASE}"
    path = raw[len(BASE) :].split("?", 1)[0].split("#", 1)[0]
    return tuple(PLACEHOLDER if VARIABLE.match(segment) else segment for segment in _segments(path))


def _matches(template: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if len(template) != len(segments):
        return False
    for expected, actual in zip(template, segments, strict=True):
        if PARAMETER.match(expected):
            continue  # a {param} takes a variable or a literal (e.g. an unknown id)
        if actual == PLACEHOLDER or actual != expected:
            return False
    return True


def _route_of(method: str, segments: tuple[str, ...], routes: set[Route]) -> Route | None:
    """The route the request hits: among the matching templates, the most literal one (as
    `/chatroom/usage` wins over `/chatroom/{chatroom_id}`)."""
    candidates = [
        (sum(not PARAMETER.match(s) for s in _segments(path)), (m, path))
        for m, path in routes
        if m == method and _matches(_segments(path), segments)
    ]
    return max(candidates)[1] if candidates else None


@pytest.fixture
def schema_routes(make_settings: Callable[..., Settings]) -> set[Route]:
    schema = create_app(make_settings()).openapi()
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    return _load(COLLECTION)


def test_every_route_has_a_request_and_every_request_a_route(
    schema_routes: set[Route], collection: dict[str, Any]
) -> None:
    assert any(path.startswith("/chatroom") for _, path in schema_routes)
    hit: set[Route] = set()
    strays = []
    for name, item in _requests(collection["item"]):
        method = item["request"]["method"].upper()
        segments = _request_segments(item["request"])
        route = _route_of(method, segments, schema_routes)
        if route is not None:
            hit.add(route)
        elif not "/".join(("", *segments)).startswith(MOCK_PREFIX + "/"):
            strays.append(f"{name}: {method} /{'/'.join(segments)}")
    assert not strays, "requests that hit no route of the schema:\n" + "\n".join(strays)
    required = {route for route in schema_routes if not route[1].startswith(MOCK_PREFIX)}
    missing = sorted(required - hit)
    assert not missing, "routes without a request in the collection:\n" + "\n".join(
        f"{method} {path}" for method, path in missing
    )


def test_collection_layout_and_assertions(collection: dict[str, Any]) -> None:
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    folders = [item["name"] for item in collection["item"]]
    assert folders[: len(FOLDERS)] == FOLDERS
    assert collection["auth"]["type"] == "bearer"
    for name, item in _requests(collection["item"]):
        tests = [
            "\n".join(event["script"]["exec"])
            for event in item.get("event", [])
            if event["listen"] == "test"
        ]
        assert tests, f"{name}: no test script"
        assert "pm.test(" in tests[0], f"{name}: no pm.test assertions"
        assert "to.have.status(" in tests[0], f"{name}: no status-code assertion"
        if "to.have.status(303)" in tests[0]:
            assert item.get("protocolProfileBehavior", {}).get("followRedirects") is False, name


def test_local_environment() -> None:
    values = {v["key"]: v["value"] for v in _load(ENVIRONMENT)["values"] if v.get("enabled", True)}
    assert values["baseUrl"] == "http://127.0.0.1:8000"
    assert values["stripeWebhookSecret"] == DEV_WEBHOOK_SECRET


def test_route_matching() -> None:
    routes = {
        ("GET", "/chatroom/usage"),
        ("GET", "/chatroom/{chatroom_id}"),
        ("GET", "/chatroom/{chatroom_id}/messages/{message_id}"),
    }
    segments = _request_segments({"url": {"raw": "{{baseUrl}}/chatroom/usage/"}})
    assert _route_of("GET", segments, routes) == ("GET", "/chatroom/usage")
    segments = _request_segments({"url": "{{baseUrl}}/chatroom/{{chatroomId}}?limit=1"})
    assert _route_of("GET", segments, routes) == ("GET", "/chatroom/{chatroom_id}")
    segments = _request_segments({"url": {"raw": "{{baseUrl}}/chatroom/999"}})
    assert _route_of("GET", segments, routes) == ("GET", "/chatroom/{chatroom_id}")
    segments = _request_segments({"url": {"raw": "{{baseUrl}}/chatroom/{{id}}/messages/{{m}}"}})
    assert _route_of("GET", segments, routes) == (
        "GET",
        "/chatroom/{chatroom_id}/messages/{message_id}",
    )
    assert _route_of("POST", segments, routes) is None
    segments = _request_segments({"url": {"raw": "{{baseUrl}}/{{chatroomId}}/usage"}})
    assert _route_of("GET", segments, routes) is None
