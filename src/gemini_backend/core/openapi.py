"""Shared OpenAPI fragments: the error body and the error responses routes declare."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: Any = Field(description="A human sentence (a list of problems for 422).")
    code: str = Field(description="A stable machine-readable code.", examples=["invalid_token"])


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("Missing, malformed, expired or revoked access token"),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("Malformed JSON"),
    413: error_doc("Body too large"),
    415: error_doc("Body is not JSON"),
    422: error_doc("Validation error"),
}
RATE_LIMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    429: error_doc("Too many requests; see Retry-After"),
}
