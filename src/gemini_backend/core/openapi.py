"""Shared OpenAPI fragments: the error body and the error responses routes declare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

# What FastAPI's `responses=` takes: status code -> an OpenAPI response (plus `model`).
Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "detail": "The access token is invalid or has been revoked.",
                "code": "invalid_token",
            }
        }
    )

    detail: Any = Field(description="A human sentence (a list of problems for 422).")
    code: str = Field(description="A stable machine-readable code.", examples=["invalid_token"])


def header_doc(description: str, kind: str = "string") -> dict[str, Any]:
    """An OpenAPI response header."""
    return {"description": description, "schema": {"type": kind}}


RETRY_AFTER: dict[str, Any] = {
    "Retry-After": header_doc("Seconds to wait before trying again.", "integer")
}
RATE_LIMIT_HEADERS: dict[str, Any] = {
    "X-RateLimit-Limit": header_doc(
        "Messages a day on the caller's plan (absent when unlimited).", "integer"
    ),
    "X-RateLimit-Remaining": header_doc("Messages left today (absent when unlimited).", "integer"),
    "X-RateLimit-Reset": header_doc(
        "Seconds until the daily quota resets (local midnight in QUOTA_TIMEZONE).", "integer"
    ),
}


def error_doc(
    description: str,
    code: str | None = None,
    detail: Any = None,
    *,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An error response with the `ErrorBody` schema and, given a `code`, an example body
    (`detail` defaults to the description)."""
    doc: dict[str, Any] = {"model": ErrorBody, "description": description}
    if code is not None:
        example = {"detail": description if detail is None else detail, "code": code}
        doc["content"] = {"application/json": {"example": example}}
    if headers:
        doc["headers"] = headers
    return doc


def problem(kind: str, loc: tuple[str | int, ...], msg: str, **ctx: str) -> dict[str, Any]:
    """One item of a 422 `detail` list, as the error handler renders it (no `input`)."""
    item: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg}
    if ctx:
        item["ctx"] = ctx
    return item


MISSING_MOBILE_NUMBER = problem("missing", ("body", "mobile_number"), "Field required")


def validation_doc(
    *rule_codes: str, example: dict[str, Any] = MISSING_MOBILE_NUMBER
) -> dict[str, Any]:
    """The 422 of a route: FastAPI's list of problems (`example` is one) with code
    validation_error, and the codes of the rules the route checks beyond the schema (their
    `detail` is a sentence)."""
    description = "Validation error: `detail` lists the problems (code `validation_error`)"
    if rule_codes:
        codes = ", ".join(f"`{code}`" for code in rule_codes)
        description += f"; a failed rule answers a sentence with its own code: {codes}"
    return error_doc(description, "validation_error", [example])


AUTH_ERRORS: Responses = {
    401: error_doc(
        "Missing, malformed, expired or revoked access token "
        "(`not_authenticated`, `invalid_token`, `token_expired`)",
        "invalid_token",
        "The access token is invalid or has been revoked.",
        headers={"WWW-Authenticate": header_doc("Bearer")},
    ),
}
VALIDATION_ERRORS: Responses = {422: validation_doc()}
BODY_ERRORS: Responses = {
    400: error_doc("Malformed JSON", "malformed_json", "The request body is not valid JSON."),
    413: error_doc(
        "Body too large (MAX_BODY_BYTES)", "payload_too_large", "The request body is too large."
    ),
    415: error_doc(
        "Body is not JSON", "unsupported_media_type", "Send the body as application/json."
    ),
    **VALIDATION_ERRORS,
}
RATE_LIMIT_ERRORS: Responses = {
    429: error_doc(
        "Too many requests; retry after `Retry-After` seconds (`rate_limited`)",
        "rate_limited",
        "Too many requests; try again later.",
        headers=RETRY_AFTER,
    ),
}


# --- examples with nulls ----------------------------------------------------------------------
# FastAPI renders the document with `exclude_none=True`, which also drops every null from the
# examples (`"error": null` disappears from a message), so an example of a model with a
# required nullable field no longer validates against its own schema. `install_openapi` puts
# the examples the models declare back.


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def declared_examples() -> dict[str, list[Any]]:
    """The `example` of every pydantic model that declares one, by model name."""
    found: dict[str, list[Any]] = {}
    pending: list[type[BaseModel]] = list(BaseModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        extra = cls.model_config.get("json_schema_extra")
        if isinstance(extra, dict) and "example" in extra:
            found.setdefault(cls.__name__, []).append(extra["example"])
    return found


def restore_null_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """Give each component schema back the example its model declares, where FastAPI's
    rendering dropped nulls from it (and only then: the rest of the example must match)."""
    declared = declared_examples()
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        served = schema.get("example")
        if served is None:
            continue
        for example in declared.get(name, []):
            if example != served and _without_nulls(example) == served:
                schema["example"] = example
                break
    return spec


TAGS: list[dict[str, str]] = [
    {"name": "Auth", "description": "OTP sign-in-or-up, passwords, access and refresh tokens."},
    {"name": "User", "description": "The signed-in user."},
    {
        "name": "Chatrooms",
        "description": "Chatrooms, messages, and AI replies produced by a worker and streamed "
        "as Server-Sent Events.",
    },
    {
        "name": "Attachments",
        "description": "Files uploaded to a chatroom and sent with its messages.",
    },
    {
        "name": "Subscriptions",
        "description": "The Basic and Pro plans, Stripe Checkout and webhooks, daily usage.",
    },
    {
        "name": "Stripe mock",
        "description": "The built-in Stripe test double (off in production and with a Stripe "
        "key): its checkout and portal pages and simulated renewals.",
    },
    {"name": "Operations", "description": "Liveness, readiness and Prometheus metrics."},
]


def install_openapi(app: FastAPI) -> None:
    """Serve the app's OpenAPI document with the examples' nulls kept (see above) and the
    tags described."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = restore_null_examples(build())
            spec.setdefault("tags", TAGS)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
