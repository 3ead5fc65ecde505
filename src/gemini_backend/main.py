"""The application factory: routers, middleware, error handlers; the lifespan owns the engines
and clients of the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gemini_backend.ai.router import router as models_router
from gemini_backend.attachments.router import UPLOAD_SUFFIX
from gemini_backend.attachments.router import router as attachments_router
from gemini_backend.attachments.service import largest_upload_body
from gemini_backend.auth.router import router as auth_router
from gemini_backend.billing import mock as stripe_mock
from gemini_backend.billing.router import router as billing_router
from gemini_backend.chat.fastpath import FastPathMiddleware
from gemini_backend.chat.router import router as chat_router
from gemini_backend.config import Settings
from gemini_backend.core.client_address import ClientAddressMiddleware, parse_networks
from gemini_backend.core.clock import Clock, SystemClock
from gemini_backend.core.errors import install_error_handlers
from gemini_backend.core.heap import settle_heap as settle_heap_now
from gemini_backend.core.logging import configure_logging, log_level
from gemini_backend.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from gemini_backend.core.openapi import install_openapi
from gemini_backend.ops.router import router as ops_router
from gemini_backend.portability.router import IMPORT_PATH
from gemini_backend.portability.router import router as portability_router
from gemini_backend.quota.router import router as quota_router
from gemini_backend.search.router import router as search_router
from gemini_backend.services import Services
from gemini_backend.users.router import router as users_router
from gemini_backend.web.router import WebClient
from gemini_backend.web.router import build_router as build_web_router

log = structlog.get_logger(__name__)
EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
]


def create_served_app() -> FastAPI:
    """The app `gemini-backend serve` runs (uvicorn's factory): one per process, for its whole
    life, so its heap is settled once started (core/heap.py)."""
    return create_app(settle_heap_at_startup=True)


def create_app(
    settings: Settings | None = None,
    clock: Clock | None = None,
    *,
    settle_heap_at_startup: bool = False,
) -> FastAPI:
    settings = settings or Settings()
    clock = clock or SystemClock()
    configure_logging(settings)
    app = FastAPI(
        title="Gemini-style chat backend",
        version="0.1.0",
        description=(
            "Mobile OTP sign-in, chatrooms with AI replies, Basic/Pro subscriptions. "
            'Errors are always `{"detail", "code"}`.'
        ),
        lifespan=_lifespan(settings, clock, settle_heap=settle_heap_at_startup),
        redirect_slashes=False,
        docs_url="/docs" if settings.docs_served else None,
        redoc_url="/redoc" if settings.docs_served else None,
        openapi_url="/openapi.json" if settings.docs_served else None,
        telemetry=(
            None
            if settings.opentelemetry
            else {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
        ),
    )
    install_error_handlers(app)
    _add_routes(app, settings)
    install_openapi(app)
    _add_middleware(app, settings)
    return app


def _lifespan(
    settings: Settings, clock: Clock, *, settle_heap: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The process's services: built (Services.build) and started before the first request,
    closed after the last."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, clock)
        try:
            await services.check_search()
        except BaseException:
            await services.aclose()
            raise
        app.state.services = services  # the app's only state (services.services_of)
        services.principals.start()
        services.chatroom_cache.start()
        embedded = not settings.is_production_mode
        # Embedded mode: this process is the worker too. Replies left queued or generating by a
        # previous run (its in-process queue died with it) are taken up again at once.
        await services.pipeline.start(run_sweeper=embedded)
        if embedded:
            try:
                await services.pipeline.sweep_once(stale_seconds=0)
            except Exception:
                # Start anyway (/ready reports the database); the periodic sweep retries.
                log.exception("startup_sweep_failed")
        if settle_heap:
            settle_heap_now()
        log.info(
            "startup",
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            mode="embedded" if embedded else "production",
            database=settings.resolved_database_url.split("://", 1)[0],
            environment=settings.environment.value,
            ai_provider=services.provider.name,
            ai_model=services.provider.model,
            ai_models=[model.id for model in services.models.catalogue.models],
            attachment_storage=services.attachments.storage.kind,
            code_delivery=settings.otp_delivery,
        )
        if settings.otp_response_exposed:
            log.warning(
                "otp_codes_in_responses",
                detail="OTP_RESPONSE_IN_PRODUCTION=true: sign-in codes are returned to whoever "
                "asks; anyone can sign in as anyone. For a demo deployment only.",
            )
        try:
            yield
        finally:
            await services.aclose()
            log.info("shutdown")

    return lifespan


def _add_routes(app: FastAPI, settings: Settings) -> None:
    # Routes are matched in this order, one after the other: the busiest routers come first.
    # (/health first: probed all the time; quota before chat: /chatroom/usage is not /{id})
    routers = [
        ops_router,
        users_router,
        quota_router,
        chat_router,
        attachments_router,
        auth_router,
        billing_router,
        models_router,
        portability_router,
        search_router,
    ]
    if settings.stripe_mock_enabled:
        routers += [stripe_mock.router, stripe_mock.api]
    if settings.web_client_enabled:
        routers.append(build_web_router(WebClient.load()))
    for router in routers:
        # One flat table instead of `include_router`: FastAPI 0.16x keeps an included router
        # as a branch re-resolved at every request (half of /health's CPU in a profile). These
        # routers take no include-time options: their routes are complete as declared (paths
        # with the prefix, tags, responses), and /openapi.json is the same either way.
        app.router.routes.extend(router.routes)


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # Added last = outermost.
    app.add_middleware(FastPathMiddleware)  # innermost: behind CORS and the request context
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            # What a browser client may read of a response (the rest of a cross-origin
            # response's headers are hidden from its scripts).
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_suffix=UPLOAD_SUFFIX,
        upload_max_bytes=largest_upload_body(settings),
        post_limits={IMPORT_PATH: settings.import_max_bytes},
    )
    app.add_middleware(
        RequestContextMiddleware,
        hsts=settings.base_url.startswith("https://"),
        log_requests=log_level(settings) <= logging.INFO,
    )
    if settings.trusted_proxy_hops or settings.trusted_proxies:
        app.add_middleware(
            ClientAddressMiddleware,
            hops=settings.trusted_proxy_hops,
            networks=parse_networks(settings.trusted_proxies),
        )
