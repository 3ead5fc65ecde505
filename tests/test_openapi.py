"""The OpenAPI document at /openapi.json and /docs: every route tagged and summarised, with
its request and response models, its error responses and realistic examples that validate
against their own schemas."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from gemini_backend.ai import router as models_router
from gemini_backend.attachments import schemas as attachment_schemas
from gemini_backend.auth import schemas as auth_schemas
from gemini_backend.billing import router as billing_router
from gemini_backend.chat import schemas as chat_schemas
from gemini_backend.core import openapi
from gemini_backend.core.errors import AppError
from gemini_backend.ops import router as ops_router
from gemini_backend.portability import schemas as portability_schemas
from gemini_backend.quota import router as quota_router
from gemini_backend.search import schemas as search_schemas
from gemini_backend.users import schemas as user_schemas
from tests.helpers import bearer, sign_in

METHODS = {"get", "post", "put", "patch", "delete"}
ERROR_BODY = "#/components/schemas/ErrorBody"
FASTAPI_422 = "#/components/schemas/HTTPValidationError"
FASTAPI_SCHEMAS = {"HTTPValidationError", "ValidationError"}

# The routes of the original brief (docs/api.md): fixed paths.
BRIEF_ROUTES = {
    ("post", "/auth/signup"),
    ("post", "/auth/send-otp"),
    ("post", "/auth/verify-otp"),
    ("post", "/auth/forgot-password"),
    ("post", "/auth/change-password"),
    ("get", "/user/me"),
    ("post", "/chatroom"),
    ("get", "/chatroom"),
    ("get", "/chatroom/{chatroom_id}"),
    ("post", "/chatroom/{chatroom_id}/message"),
    ("post", "/subscribe/pro"),
    ("post", "/webhook/stripe"),
    ("get", "/subscription/status"),
}
# Routes that cannot answer a client error: probes and HTML pages. /ready has no input and
# reports an unreachable dependency as 503 with its own body.
NO_CLIENT_ERRORS = {
    "/health",
    "/ready",
    "/metrics",
    "/subscribe/success",
    "/subscribe/cancelled",
    "/subscribe/return",
}
MOCK_PREFIX = "/mock-stripe/"  # the Stripe mock: HTML pages and Stripe-shaped errors

SCHEMA_MODULES = (
    attachment_schemas,
    auth_schemas,
    chat_schemas,
    portability_schemas,
    user_schemas,
    billing_router,
    quota_router,
    ops_router,
    models_router,
    search_schemas,
    openapi,
)
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
E164 = re.compile(r"^\+[1-9]\d{7,14}$")
INTEGER_IDS = {"id", "chatroom_id", "message_id", "reply_id", "reply_to"}
# The model catalogue: a model's `id` is its name (`gemini-2.5-flash`), not a row's number.
NAMED_BY_STRINGS = {"ModelOut", "ModelList"}


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def own_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation but the Stripe mock's."""
    for method, path, operation in operations(spec):
        if not path.startswith(MOCK_PREFIX):
            yield method, path, operation


def models_by_name() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for module in SCHEMA_MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
                found[value.__name__] = value
    return found


def error_classes() -> list[type[AppError]]:
    """AppError and every subclass of it in the application (the app is imported)."""
    found: list[type[AppError]] = []
    pending: list[type[AppError]] = [AppError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def error_codes() -> set[str]:
    """Every `code` an AppError of the application can answer."""
    return {cls.code for cls in error_classes()}


def fixed_detail(cls: type[AppError]) -> str | None:
    """The text every raise of `cls` answers: the `detail` the class sets itself, unless other
    errors derive from it (a base's text is a fallback for raises that say what went wrong, as
    each limit of the throttle does); None for a text given when raised."""
    if "detail" in vars(cls) and not cls.__subclasses__():
        return cls.detail
    return None


def request_body_schemas(spec: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for _, _, operation in operations(spec):
        content = operation.get("requestBody", {}).get("content", {})
        for media in content.values():
            schema = media.get("schema", {})
            for ref in [schema.get("$ref"), *(s.get("$ref") for s in schema.get("anyOf", []))]:
                if ref:
                    names.add(ref.rsplit("/", 1)[-1])
    return names


def walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    yield key, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, key)


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower()
    assert "/openapi.json" in docs.text


async def test_every_route_of_the_brief_is_documented(spec: dict[str, Any]) -> None:
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert documented >= BRIEF_ROUTES, BRIEF_ROUTES - documented


async def test_every_operation_has_tags_a_summary_and_success_response(
    spec: dict[str, Any],
) -> None:
    for method, path, operation in operations(spec):
        assert operation.get("tags"), (method, path)
        assert operation.get("summary", "").strip(), (method, path)
        assert any(code.startswith(("2", "3")) for code in operation["responses"]), (method, path)


async def test_every_operation_that_takes_input_declares_client_errors(
    spec: dict[str, Any],
) -> None:
    for method, path, operation in operations(spec):
        if path in NO_CLIENT_ERRORS:
            continue
        codes = operation["responses"]
        assert any(code.startswith("4") for code in codes), (method, path, sorted(codes))


async def test_error_responses_are_error_bodies_with_examples(spec: dict[str, Any]) -> None:
    known = error_codes()
    for method, path, operation in own_operations(spec):
        for code, response in operation["responses"].items():
            if not code.startswith(("4", "5")):
                continue
            if path == "/ready":
                assert response["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ReadyOut"
                )
                continue
            where = (method, path, code)
            media = response["content"]["application/json"]
            ref = media["schema"]["$ref"]
            assert ref == ERROR_BODY or (code == "422" and ref == FASTAPI_422), where
            assert response.get("description"), where
            if ref != ERROR_BODY:
                continue
            example = media.get("example")
            assert example is not None, where
            openapi.ErrorBody.model_validate(example)
            assert set(example) == {"detail", "code"}, where
            assert example["code"] in known, where
            if code == "422":
                assert example["code"] == "validation_error", where
                assert isinstance(example["detail"], list), where
            else:
                assert isinstance(example["detail"], str), where
                assert example["detail"], where
            if code == "429":
                assert "Retry-After" in response.get("headers", {}), where
            if code == "401" and path != "/auth/refresh" and "security" in operation:
                assert "WWW-Authenticate" in response.get("headers", {}), where


async def test_documented_codes_and_texts_are_the_error_classes(spec: dict[str, Any]) -> None:
    """Each error response names codes of AppError classes of its status, its example is one of
    them, and the example's text is the class's where the class has a fixed one."""
    classes: dict[str, list[type[AppError]]] = {}
    for cls in error_classes():
        classes.setdefault(cls.code, []).append(cls)
    body_fields = set(openapi.ErrorBody.model_fields)  # `detail` is no code
    checked = 0
    for method, path, operation in own_operations(spec):
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get("application/json", {})
            if not status.startswith(("4", "5")) or media.get("schema", {}).get("$ref") != (
                ERROR_BODY
            ):
                continue
            where = (method, path, status)
            named = set(re.findall(r"`([a-z][a-z0-9_]*)`", response["description"]))
            named -= body_fields
            example = media["example"]
            assert example["code"] in named, where
            for code in named:
                assert code in classes, (where, code)
                assert int(status) in {cls.status_code for cls in classes[code]}, (where, code)
            texts = {fixed_detail(cls) for cls in classes[example["code"]]}
            if None not in texts:
                assert example["detail"] in texts, where
                checked += 1
    assert checked >= 20  # most documented errors have a fixed text


async def test_an_error_doc_is_written_from_the_classes() -> None:
    from gemini_backend.chat.errors import ChatroomNotFound, MessageNotFound
    from gemini_backend.core.errors import Conflict

    doc = openapi.error_doc_for(
        ("No room", ChatroomNotFound),
        ("no message", MessageNotFound),
        example=MessageNotFound,
        note="see the list",
    )
    assert list(doc) == [404]
    assert doc[404]["description"] == (
        "No room (`chatroom_not_found`), or no message (`message_not_found`); see the list"
    )
    assert doc[404]["content"]["application/json"]["example"] == {
        "detail": MessageNotFound.detail,
        "code": "message_not_found",
    }
    formatted = openapi.error_doc_for(("Full", Conflict), detail="You have 3 rooms.")
    assert formatted[409]["content"]["application/json"]["example"]["detail"] == (
        "You have 3 rooms."
    )
    with pytest.raises(ValueError, match="one status"):
        openapi.error_doc_for(("No room", ChatroomNotFound), ("busy", Conflict))


async def test_validation_errors_document_the_error_body(spec: dict[str, Any]) -> None:
    """Our 422 is `{"detail": [...], "code": "validation_error"}`, not only FastAPI's shape."""
    for method, path, operation in own_operations(spec):
        takes_input = "requestBody" in operation or operation.get("parameters")
        if not takes_input or path == "/webhook/stripe":  # a raw body, read unvalidated
            continue
        ref = operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == ERROR_BODY, (method, path)


async def test_shared_error_fragments_carry_examples() -> None:
    for responses in (
        openapi.AUTH_ERRORS,
        openapi.BODY_ERRORS,
        openapi.RATE_LIMIT_ERRORS,
        openapi.VALIDATION_ERRORS,
    ):
        for doc in responses.values():
            assert doc["model"] is openapi.ErrorBody
            example = doc["content"]["application/json"]["example"]
            assert example["code"] in error_codes()
    assert openapi.error_doc("Plain") == {"model": openapi.ErrorBody, "description": "Plain"}
    doc = openapi.error_doc("Gone", "not_found", "Not found.")
    assert doc["content"] == {
        "application/json": {"example": {"detail": "Not found.", "code": "not_found"}}
    }


def declared_example(model: type[BaseModel]) -> Any:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict), f"{model.__name__} has no example"
    assert "example" in extra, f"{model.__name__} has no example"
    return extra["example"]


def check_component_examples(spec: dict[str, Any], *, nulls_kept: bool) -> None:
    """Each component has an example: the one its model declares, complete and valid.

    FastAPI renders the document with exclude_none, which drops nulls from examples too;
    `install_openapi` (core/openapi.py) restores them (`nulls_kept`)."""
    models = models_by_name()
    inputs = request_body_schemas(spec)
    for name, schema in spec["components"]["schemas"].items():
        if name in FASTAPI_SCHEMAS:
            continue
        assert "example" in schema, f"{name} has no example"
        assert name in models, f"{name}: no pydantic model to check its example with"
        example = declared_example(models[name])
        if nulls_kept:
            assert schema["example"] == example, name
        else:
            assert schema["example"] in (example, openapi._without_nulls(example)), name
        parsed = models[name].model_validate(example)
        properties = set(schema.get("properties", {}))
        assert set(schema.get("required", [])) <= set(example) <= properties, name
        if name not in inputs:
            # A response example shows every field, exactly as the server would render it.
            assert set(example) == properties, name
            assert parsed.model_dump(mode="json") == example, name


async def test_every_component_schema_has_a_valid_example(spec: dict[str, Any]) -> None:
    check_component_examples(spec, nulls_kept=False)


async def test_install_openapi_keeps_the_nulls_of_examples(
    app: Any, client: httpx.AsyncClient
) -> None:
    openapi.install_openapi(app)
    app.openapi_schema = None
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    check_component_examples(spec, nulls_kept=True)
    used = {tag for _, _, operation in operations(spec) for tag in operation["tags"]}
    assert used <= {tag["name"] for tag in spec["tags"]}
    message = spec["components"]["schemas"]["MessageOut"]["example"]
    assert message["error"] is None
    assert models_by_name()["MessageOut"].model_validate(message)


async def test_examples_use_the_conventions_of_the_contract(spec: dict[str, Any]) -> None:
    examples: list[Any] = [
        schema["example"]
        for name, schema in spec["components"]["schemas"].items()
        if name not in FASTAPI_SCHEMAS | NAMED_BY_STRINGS
    ]
    for _, _, operation in own_operations(spec):
        for response in operation["responses"].values():
            for media in response.get("content", {}).values():
                if "example" in media:
                    examples.append(media["example"])
    seen = set()
    for example in examples:
        for key, value in walk(example):
            if key in INTEGER_IDS and value is not None:
                assert isinstance(value, int), (key, value)
                assert not isinstance(value, bool), (key, value)
                seen.add("id")
            if (key.endswith("_at") or key == "current_period_end") and value is not None:
                assert isinstance(value, str), (key, value)
                assert ISO_UTC.match(value), (key, value)
                seen.add("time")
            if key == "mobile_number" and isinstance(value, str):
                assert E164.match(value), value
                seen.add("number")
    assert seen == {"id", "time", "number"}


async def test_documented_validation_examples_match_real_responses(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/auth/send-otp", json={})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["detail"] == [openapi.MISSING_MOBILE_NUMBER]

    headers = bearer(await sign_in(client))
    listed = await client.get("/chatroom", params={"limit": 101}, headers=headers)
    assert listed.status_code == 422
    documented = (await client.get("/openapi.json")).json()["paths"]["/chatroom"]["get"]
    example = documented["responses"]["422"]["content"]["application/json"]["example"]
    assert listed.json() == example


async def test_sending_documents_receipt_quota_and_idempotency(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/chatroom/{chatroom_id}/message"]["post"]
    accepted = operation["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"]["$ref"].endswith("/SendReceipt")
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
        accepted["headers"]
    )
    limited = operation["responses"]["429"]
    assert limited["content"]["application/json"]["example"]["code"] == "daily_limit_reached"
    assert "Retry-After" in limited["headers"]
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    description = operation["description"]
    for needle in ("202", "Idempotency-Key", "X-RateLimit-", "Retry-After", "stream_url"):
        assert needle in description, needle
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/MessageCreate"
    )


async def test_the_stream_documents_server_sent_events(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/chatroom/{chatroom_id}/messages/{message_id}/stream"]["get"]
    content = operation["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    example = content["text/event-stream"]["example"]
    events = content["text/event-stream"]["itemSchema"]["properties"]["event"]["enum"]
    assert set(events) == {"delta", "reset", "done", "error"}
    assert "event: delta" in example
    assert "event: done" in example
    description = operation["description"]
    for needle in ("delta", "done", "error", "reset", "Last-Event-ID"):
        assert needle in description, needle
    assert any(p["name"] == "Last-Event-ID" for p in operation["parameters"])


async def test_pagination_and_cache_are_described(spec: dict[str, Any]) -> None:
    rooms = spec["paths"]["/chatroom"]["get"]
    assert "cursor" in rooms["description"]
    assert "X-Cache" in rooms["responses"]["200"]["headers"]
    assert rooms["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatroomPage"
    )
    history = spec["paths"]["/chatroom/{chatroom_id}/messages"]["get"]
    assert "before" in history["description"]


async def test_authenticated_operations_declare_the_bearer_scheme(spec: dict[str, Any]) -> None:
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    for method, path, operation in own_operations(spec):
        if "401" in operation["responses"] and path not in {
            "/auth/verify-otp",
            "/auth/login",
            "/auth/refresh",
            "/auth/reset-password",
            "/metrics",  # the bearer is METRICS_TOKEN, a deployment's option, not a user's token
        }:
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
