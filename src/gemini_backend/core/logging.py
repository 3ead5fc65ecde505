"""Structured logging with structlog: JSON in production, readable console output otherwise.

Secrets never reach a log line: known secret-bearing keys are redacted wherever they appear,
and request bodies are never logged.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from gemini_backend.config import Environment, Settings

_SECRET_KEY = re.compile(
    r"(pass(word)?|otp|token|secret|authorization|cookie|api[_-]?key|code_digest|signature)",
    re.IGNORECASE,
)
_JWT_LIKE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
REDACTED = "[redacted]"
_PARAMETER_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy", "redis", "httpcore", "httpx")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _JWT_LIKE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def log_level(settings: Settings) -> int:
    """LOG_LEVEL as a `logging` level (INFO if unknown)."""
    return logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)


def configure_logging(settings: Settings) -> None:
    level = log_level(settings)
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and settings.environment is Environment.PRODUCTION
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        # Plain tracebacks: rich's (the default when installed) print every frame's locals,
        # request headers and tokens among them.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Route the standard library's records (uvicorn, SQLAlchemy, taskiq) through the same output.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # A record's traceback as text (`exception`): JSON would otherwise keep only
                # the repr of its exc_info.
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that log SQL with its parameters (password hashes, token digests) or request
    # URLs stay at WARNING whatever LOG_LEVEL says.
    for name in _PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Requests are logged once by our middleware, with the request id.
    logging.getLogger("uvicorn.access").disabled = True
