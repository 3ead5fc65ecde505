"""Shared OpenAPI fragments: the error body and the error responses routes declare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.core.errors import (
    AppError,
    MalformedJson,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from gemini_backend.core.security import ExpiredToken, InvalidToken

# What FastAPI's `responses=` takes: status code -> an OpenAPI response (plus `model`).
Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"detail": InvalidToken.detail, "code": InvalidToken.code}}
    )

    detail: Any = Field(description="A human sentence (a list of problems for 422).")
    code: str = Field(description="A stable machine-readable code.", examples=[InvalidToken.code])


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
TOKEN_BUDGET_HEADERS: dict[str, Any] = {
    "X-TokenBudget-Limit": header_doc(
        "Tokens a month on the caller's plan (absent when unlimited or not configured).",
        "integer",
    ),
    "X-TokenBudget-Remaining": header_doc(
        "Tokens left this month: the limit less those used and reserved (same).", "integer"
    ),
    "X-TokenBudget-Reset": header_doc(
        "Seconds until the month's budget resets (00:00 UTC on the 1st; same).", "integer"
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


# One way a route fails, as its documentation says it: what happened, then the error classes
# that answer it (their codes are named after it).
ErrorCase = tuple[str, *tuple[type[AppError], ...]]


def _case_text(case: ErrorCase) -> str:
    what, *errors = case
    return f"{what} ({', '.join(f'`{error.code}`' for error in errors)})"


def _cases_text(cases: tuple[ErrorCase, ...]) -> str:
    texts = [_case_text(case) for case in cases]
    if len(texts) == 1:
        return texts[0]
    return ", ".join(texts[:-1]) + ", or " + texts[-1]


def error_doc_for(
    *cases: ErrorCase,
    example: type[AppError] | None = None,
    detail: str | None = None,
    note: str | None = None,
    headers: dict[str, Any] | None = None,
) -> Responses:
    """The error response, under its status, of the errors of `cases` (all of one status): the
    description joins the cases, each naming its codes, then `note`; the example body is
    `example`'s code (by default the first error's) with its `detail`, or with `detail` given
    here for a text the raise formats."""
    errors = [error for _, *case_errors in cases for error in case_errors]
    example = example or errors[0]
    statuses = {error.status_code for error in errors}
    if statuses != {example.status_code}:
        raise ValueError(f"one response, one status: {sorted(statuses)}")
    description = _cases_text(cases) + (f"; {note}" if note else "")
    doc = error_doc(
        description, example.code, example.detail if detail is None else detail, headers=headers
    )
    return {example.status_code: doc}


def problem(kind: str, loc: tuple[str | int, ...], msg: str, **ctx: str) -> dict[str, Any]:
    """One item of a 422 `detail` list, as the error handler renders it (no `input`)."""
    item: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg}
    if ctx:
        item["ctx"] = ctx
    return item


MISSING_MOBILE_NUMBER = problem("missing", ("body", "mobile_number"), "Field required")


def validation_doc(
    *rules: type[ValidationFailed], example: dict[str, Any] = MISSING_MOBILE_NUMBER
) -> dict[str, Any]:
    """The 422 of a route: FastAPI's list of problems (`example` is one) with code
    validation_error, and the codes of the rules the route checks beyond the schema (their
    `detail` is a sentence)."""
    code = ValidationFailed.code
    description = f"Validation error: `detail` lists the problems (code `{code}`)"
    if rules:
        codes = ", ".join(f"`{rule.code}`" for rule in rules)
        description += f"; a failed rule answers a sentence with its own code: {codes}"
    return error_doc(description, code, [example])


AUTH_ERRORS: Responses = error_doc_for(
    (
        "Missing, malformed, expired or revoked access token",
        Unauthorized,
        InvalidToken,
        ExpiredToken,
    ),
    example=InvalidToken,
    headers={"WWW-Authenticate": header_doc("Bearer")},
)
VALIDATION_ERRORS: Responses = {422: validation_doc()}
BODY_ERRORS: Responses = {
    **error_doc_for(("Malformed JSON", MalformedJson)),
    **error_doc_for(("Body larger than MAX_BODY_BYTES", PayloadTooLarge)),
    **error_doc_for(("Body is not JSON", UnsupportedMediaType)),
    **VALIDATION_ERRORS,
}
RATE_LIMIT_ERRORS: Responses = error_doc_for(
    ("Too many requests", TooManyRequests),
    note="retry after `Retry-After` seconds",
    headers=RETRY_AFTER,
)


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
        "name": "Models",
        "description": "The configured providers' models, what each supports, who may use it.",
    },
    {
        "name": "Attachments",
        "description": "Files uploaded to a chatroom and sent with its messages.",
    },
    {
        "name": "Sharing and your data",
        "description": "Public read-only share links, export and import of conversations.",
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
    {
        "name": "Search",
        "description": "Full-text search over the caller's messages and chatroom names.",
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
