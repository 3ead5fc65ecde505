"""One error type, one renderer: every error body is `{"detail": ..., "code": ...}`."""

from __future__ import annotations

import email.message
from collections.abc import Mapping
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = structlog.get_logger(__name__)


class AppError(Exception):
    """A domain error with its HTTP status and machine-readable code.

    Subclasses fix `status_code`, `code` and a default `detail`; raise them from services and
    dependencies, never build error JSON in a route.
    """

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    detail: str = "The request could not be processed."
    # True for errors that report a state change which must persist (a counted failed attempt):
    # the request's transaction is then committed rather than rolled back.
    keeps_changes: ClassVar[bool] = False

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None):
        if detail is not None:
            self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    def with_headers(self, headers: Mapping[str, str]) -> AppError:
        self.headers.update(headers)
        return self


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class MalformedJson(AppError):
    status_code = 400
    code = "malformed_json"
    detail = "The request body is not valid JSON."


class Unauthorized(AppError):
    status_code = 401
    code = "not_authenticated"
    detail = "Authentication is required."

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    detail = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    detail = "The request body is too large."


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    detail = "Send the body as application/json."


class ValidationFailed(AppError):
    """A rule on a valid-looking input failed (invalid phone number, weak password...)."""

    status_code = 422
    code = "validation_error"


class TooManyRequests(AppError):
    status_code = 429
    code = "rate_limited"
    detail = "Too many requests; try again later."

    def __init__(self, retry_after: float, detail: str | None = None):
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(self.retry_after)})


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    detail = "The service is temporarily unavailable."


class BackingServiceUnavailable(ServiceUnavailable):
    """A database or Redis that cannot be reached right now (`is_outage`)."""

    detail = "A backing service is unavailable; retry shortly."


def error_response(
    status_code: int, code: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"detail": jsonable_encoder(detail), "code": code},
        status_code=status_code,
        headers=dict(headers or {}),
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's error list without the raw `input` (it may hold a password or an OTP)."""
    cleaned = []
    for error in errors:
        item = {k: v for k, v in error.items() if k not in {"input", "url"}}
        if "ctx" in item:
            item["ctx"] = {k: str(v) for k, v in item["ctx"].items()}
        cleaned.append(item)
    return cleaned


def app_error_response(exc: AppError) -> JSONResponse:
    """The answer to a domain error: its status, code, detail and headers."""
    return error_response(exc.status_code, exc.code, exc.detail, exc.headers)


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return app_error_response(exc)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, MalformedJson.code, MalformedJson.detail)
    body_errors = [e for e in errors if e.get("loc", ("",))[0] == "body"]
    content_type = request.headers.get("content-type")
    if body_errors and content_type and not _is_json_content_type(content_type):
        return error_response(415, UnsupportedMediaType.code, UnsupportedMediaType.detail)
    return error_response(422, ValidationFailed.code, _clean_validation_errors(errors))


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail
    headers = exc.headers
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's "error parsing the body" for a JSON body that is not UTF-8 (or 16, 32).
        return error_response(400, MalformedJson.code, MalformedJson.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "No such route."
    elif exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return error_response(exc.status_code, code, detail, headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to (RFC 9110 15.5.6). Starlette's 405 names only the
    methods of the first route whose path matched, and a path such as `/chatroom` has one
    route per method. A concrete path (`/chatroom/usage`) is its own resource, not an instance
    of a templated one (`/chatroom/{chatroom_id}`), as OpenAPI matches paths."""
    concrete: set[str] = set()
    templated: set[str] = set()
    for route in request.app.router.routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(request.scope)[0] is not Match.NONE:
            (templated if getattr(route, "param_convertors", None) else concrete).update(methods)
    return ", ".join(sorted(concrete or templated))


# PostgreSQL errors that mean "not now" rather than "wrong": connection exceptions (08),
# shutting down or starting up (57P01-57P03, e.g. "the database system is shutting down"),
# too many connections (53300).
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_outage(exc: BaseException) -> bool:
    """True for a database or Redis that cannot be reached right now (restarting, failing
    over, pool exhausted): the client should retry, so 503 rather than 500."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    seen: BaseException | None = exc
    for _ in range(5):  # the exception and its causes
        if seen is None:
            return False
        if isinstance(
            seen,
            RedisConnectionError
            | RedisTimeoutError
            | OperationalError
            | InterfaceError
            | PoolTimeoutError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if str(getattr(seen, "sqlstate", "") or "").startswith(_OUTAGE_SQLSTATES):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


async def _unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return unexpected_error_response(exc, request.method, request.url.path)


def unexpected_error_response(exc: Exception, method: str, path: str) -> JSONResponse:
    """The answer to an exception nothing else handled: 503 for an outage, 500 otherwise.
    Logs it (with the traceback for a 500)."""
    if is_outage(exc):
        log.warning("dependency_unavailable", path=path, method=method, error=type(exc).__name__)
        outage = BackingServiceUnavailable(headers={"Retry-After": "2"})
        return app_error_response(outage)
    log.error("unhandled_error", path=path, method=method, exc_info=exc)
    return error_response(500, "internal_error", "An internal error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
