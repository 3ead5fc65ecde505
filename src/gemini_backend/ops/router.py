from __future__ import annotations

import asyncio
import hmac
from datetime import UTC
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from gemini_backend.chat.models import Message
from gemini_backend.chat.states import ReplyStatus
from gemini_backend.core import metrics
from gemini_backend.core.db import DbSession, release_connection
from gemini_backend.core.errors import NotFound, Unauthorized
from gemini_backend.core.openapi import error_doc_for, header_doc
from gemini_backend.services import services_of

router = APIRouter(tags=["Operations"])


class MetricsTokenRequired(Unauthorized):
    detail = "Send 'Authorization: Bearer <METRICS_TOKEN>'."


READY_TIMEOUT_SECONDS = 3.0


class ReadyAi(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"provider": "demo", "model": "demo"}})

    provider: str = Field(description="demo, gemini or openai")
    model: str


class ReadyOut(BaseModel):
    """The body of `GET /ready` (documentation: the route builds it as a plain dict)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "ready",
                "mode": "embedded",
                "checks": {"database": "ok", "throttle": "ok"},
                "ai": {"provider": "demo", "model": "demo"},
                "queue": "in-process",
                "storage": "local",
                "otp_delivery": "response",
                "warning": None,
            }
        }
    )

    status: str = Field(description="ready | unavailable")
    mode: str = Field(description="embedded | production")
    checks: dict[str, str] = Field(description='Each dependency: "ok" or "error: <type>"')
    ai: ReadyAi
    queue: str = Field(description="in-process | redis-streams")
    storage: str = Field(description="Where attachments are stored: local | s3 (S3_BUCKET)")
    otp_delivery: str = Field(description="response | log | twilio (OTP_DELIVERY)")
    warning: str | None = Field(
        default=None,
        description="Present when a production deployment returns OTPs in responses on purpose",
    )


@router.get(
    "/health",
    summary="Liveness: the process is up (no I/O)",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database, cache and queue reachable",
    description=(
        "Probes each dependency (3 s timeout each): the database, Redis when configured, and "
        "the throttle's storage. 503 with the same body (status unavailable) when one fails."
    ),
    responses={
        200: {"model": ReadyOut, "description": "Every dependency answered"},
        503: {
            "model": ReadyOut,
            "description": "A dependency is unreachable",
            "content": {
                "application/json": {
                    "example": {
                        "status": "unavailable",
                        "mode": "production",
                        "checks": {
                            "database": "ok",
                            "redis": "error: ConnectionError",
                            "throttle": "error: ConnectionError",
                        },
                        "ai": {"provider": "gemini", "model": "gemini-2.5-flash"},
                        "queue": "redis-streams",
                        "storage": "s3",
                    }
                }
            },
        },
    },
)
async def ready(request: Request) -> JSONResponse:
    state = services_of(request)
    checks: dict[str, Any] = {}

    async def probe(name: str, call: Any) -> None:
        try:
            await asyncio.wait_for(call(), READY_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}"

    await probe("database", state.database.ping)
    if state.redis is not None:
        await probe("redis", state.redis.ping)
    await probe("throttle", state.throttle.ping)
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ready" if ok else "unavailable",
        "mode": "production" if state.settings.is_production_mode else "embedded",
        "checks": checks,
        "ai": {"provider": state.provider.name, "model": state.provider.model},
        # Embedded mode: jobs run in this process. Production: Redis Streams (the redis check).
        "queue": "redis-streams" if state.settings.is_production_mode else "in-process",
        "storage": state.attachments.storage.kind,
        "otp_delivery": state.settings.otp_delivery,
    }
    if state.settings.otp_response_exposed:
        body["warning"] = (
            "OTP_RESPONSE_IN_PRODUCTION=true: sign-in codes are returned in responses, so "
            "anyone can sign in as anyone (a demo deployment)."
        )
    return JSONResponse(body, status_code=200 if ok else 503)


def _metrics_allowed(request: Request) -> None:
    """METRICS_TOKEN, when set, as a bearer token; in production /metrics is not served at all
    without one (a 404, as for an unknown route)."""
    settings = services_of(request).settings
    if not settings.metrics_served:
        raise NotFound("No such route.")
    if settings.metrics_token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise MetricsTokenRequired()


@router.get(
    "/metrics",
    summary="Prometheus metrics (all API processes of this host in multi-process mode)",
    description=(
        "With METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`; in "
        "production not served without one."
    ),
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **error_doc_for(
            ("METRICS_TOKEN is set and the request does not carry it", MetricsTokenRequired),
            headers={"WWW-Authenticate": header_doc("Bearer")},
        ),
    },
)
async def prometheus_metrics(request: Request, session: DbSession) -> Response:
    _metrics_allowed(request)
    # The queue as the database sees it (the source of truth): waiting replies and the oldest.
    depth, oldest = (
        await session.execute(
            select(func.count(), func.min(Message.created_at)).where(
                Message.role == "assistant", Message.status == ReplyStatus.QUEUED
            )
        )
    ).one()
    await release_connection(session)
    metrics.QUEUE_DEPTH.set(depth)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    now = services_of(request).clock.now()
    metrics.QUEUE_LAG.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
