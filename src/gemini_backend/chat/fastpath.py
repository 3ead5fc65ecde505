"""Cached reads answered before routing: `GET /chatroom` and `GET /chatroom/{id}`.

These are the reads clients repeat (a room list on every screen, a room polled while a reply is
produced). When everything the answer needs is already in this process's memory (the principal
of a live session, auth/principals.py, and the body the route served last for that user and
page or room, chat/cache.py) the answer is those bytes. This middleware sends them without
FastAPI's routing, dependency resolution and response handling, which measured about two thirds
of the CPU of such a read (bench/README.md).

It only ever answers with a body the route itself produced, under the rules that keep that body
current (dropped on every change, in every process). Anything else goes on to the routes
untouched, which answer (and fill the caches) as always: no token or one that does not verify,
an expired token, a principal or body not in memory, a query string or room id other than the
plain forms of chat/reads.py (the module the routes take their query rules and the page's cache
key from), any other method or path. It sits inside the request middleware (request id,
security headers, metrics and the access line apply) and inside CORS.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from gemini_backend.chat.reads import page_key_of_query, room_id_of
from gemini_backend.core.errors import AppError

if TYPE_CHECKING:  # the root imports the chat domain; this runs before any route
    from gemini_backend.services import Services

LIST_PATH = "/chatroom"
ROOM_PREFIX = "/chatroom/"
ROOM_ROUTE = "/chatroom/{chatroom_id}"


class CachedReadMiddleware:
    """A plain function, not a coroutine, in front of the app: a request it does not answer is
    handed on without a frame of its own staying alive for the request's lifetime (an open
    stream holds every coroutine frame of the stack)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[str, Any] | None = None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path == LIST_PATH or path.startswith(ROOM_PREFIX):
                found = self._cached(scope, path)
                if found is not None:
                    return self._send(send, *found)
        return self.app(scope, receive, send)

    def _cached(self, scope: Scope, path: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        services: Services | None = getattr(scope["app"].state, "services", None)
        if services is None:  # not started
            return None
        user = self._principal(scope, services)
        if user is None:
            return None
        cache = services.chatroom_cache
        if path == LIST_PATH:
            page = page_key_of_query(scope["query_string"])
            body = cache.list_peek(user.id, page) if page is not None else None
            template, extra = LIST_PATH, [(b"x-cache", b"HIT")]
        else:
            room = None if scope["query_string"] else room_id_of(path[len(ROOM_PREFIX) :])
            if room is None:
                return None
            body = cache.room_peek(user.id, room)
            template, extra = ROOM_ROUTE, []
            if body is not None:
                structlog.contextvars.bind_contextvars(chatroom_id=room)
        if body is None:
            return None
        structlog.contextvars.bind_contextvars(user_id=user.id)
        scope["route"] = self._route(scope, template)  # the metrics' route label
        return body, extra

    @staticmethod
    async def _send(send: Send, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _principal(scope: Scope, services: Services) -> Any:
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        deps = services.auth
        try:
            claims = deps.tokens.decode_access_token(token.decode("latin-1"), deps.clock.now())
        except AppError:
            return None  # the route answers 401
        return services.principals.cached(claims.user_id, claims.session_id)

    def _route(self, scope: Scope, template: str) -> Any:
        if self._routes is None:
            self._routes = {
                route.path: route
                for route in scope["app"].routes
                if getattr(route, "path", None) in (LIST_PATH, ROOM_ROUTE)
                and "GET" in (getattr(route, "methods", None) or ())
            }
        return self._routes.get(template)
