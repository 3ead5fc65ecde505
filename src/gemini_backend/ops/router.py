from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["Operations"])

READY_TIMEOUT_SECONDS = 3.0


@router.get("/health", summary="Liveness: the process is up (no I/O)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database, cache and queue reachable",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
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
        "ai": {"provider": state.services.provider.name, "model": state.services.provider.model},
        # Embedded mode: jobs run in this process. Production: Redis Streams (the redis check).
        "queue": "redis-streams" if state.settings.is_production_mode else "in-process",
    }
    return JSONResponse(body, status_code=200 if ok else 503)
