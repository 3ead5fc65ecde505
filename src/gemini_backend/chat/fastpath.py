"""Requests answered before routing: the cached reads `GET /chatroom` and `GET /chatroom/{id}`,
and the plain send `POST /chatroom/{id}/message`.

These are the requests clients repeat (a room list on every screen, a room polled while a reply
is produced, a message after each reply). FastAPI's routing, dependency resolution and response
handling measured about two thirds of the CPU of a cached read and a sixth of a send's
(bench/README.md); this middleware does the same work without them.

A read is only ever answered with a body the route itself produced, under the rules that keep
that body current (dropped on every change, in every process): when everything the answer needs
is already in this process's memory (the principal of a live session, auth/principals.py, and
the body the route served last for that user and page or room, chat/cache.py), the answer is
those bytes. A send is answered only when its principal is in memory and its body is JSON that
`MessageCreate` accepts as it is; it then calls the route's own sender (chat/sending.py) with
what the route would pass, answers its errors as the app's handler does, and its receipt as
FastAPI serialises the route's return value.

Anything else goes on to the routes untouched (a send with its body replayed), which answer (and
fill the caches) as always: no token or one that does not verify, an expired token, a principal
or body not in memory, a query string or room id other than the plain forms of chat/reads.py
(the module the routes take their query rules and the page's cache key from), a send body that
is chunked, not declared as JSON (or declared twice), cut off by the client, or one the model
refuses, any other method or path. It sits inside the request middleware (request id, security
headers, metrics and the access line apply), inside the body limit and inside CORS.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemini_backend.chat.reads import page_key_of_query, room_id_of
from gemini_backend.chat.schemas import MessageCreate, SendReceipt
from gemini_backend.core.errors import AppError, app_error_response

if TYPE_CHECKING:  # the root imports the chat domain; this runs before any route
    from gemini_backend.auth.principals import SignedInUser
    from gemini_backend.services import Services

LIST_PATH = "/chatroom"
ROOM_PREFIX = "/chatroom/"
ROOM_ROUTE = "/chatroom/{chatroom_id}"
SEND_SUFFIX = "/message"
SEND_ROUTE = "/chatroom/{chatroom_id}/message"
_ROUTES = {(LIST_PATH, "GET"), (ROOM_ROUTE, "GET"), (SEND_ROUTE, "POST")}
# FastAPI's serialiser of the route's return value (its `dump_json` path: the same bytes).
_RECEIPT = TypeAdapter(SendReceipt)


class FastPathMiddleware:
    """A plain function, not a coroutine, in front of the app: a request it does not answer is
    handed on without a frame of its own staying alive for the request's lifetime (an open
    stream holds every coroutine frame of the stack)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], Any] | None = None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] == "GET":
                if path == LIST_PATH or path.startswith(ROOM_PREFIX):
                    found = self._cached(scope, path)
                    if found is not None:
                        return self._answer(send, *found)
            elif scope["method"] == "POST" and path.endswith(SEND_SUFFIX):
                answered = self._plain_send(scope, receive, send, path)
                if answered is not None:
                    return answered
        return self.app(scope, receive, send)

    def _plain_send(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> Awaitable[None] | None:
        """The send's handler when the request's line and headers are the plain form."""
        if scope["query_string"] or not path.startswith(ROOM_PREFIX):
            return None
        room = room_id_of(path[len(ROOM_PREFIX) : -len(SEND_SUFFIX)])
        services: Services | None = getattr(scope["app"].state, "services", None)
        if room is None or services is None:
            return None
        json_body: bool | None = None
        declared = False
        key: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                if json_body is not None:  # two of them: the route tells which counts
                    return None
                kind = value.partition(b";")[0].strip().lower()
                json_body = kind == b"application/json"
            elif name == b"content-length":
                declared = True
            elif name == b"transfer-encoding":
                return None
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
        if not (json_body and declared):
            return None
        user = self._principal(scope, services)
        if user is None:
            return None
        return self._post_message(scope, receive, send, services, user, room, key)

    async def _post_message(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        user: SignedInUser,
        room_id: int,
        key: str | None,
    ) -> None:
        received = await _whole_body(receive)
        if isinstance(received, list):  # the client left mid-body: the route answers that
            await self.app(scope, _replayed(received, receive), send)
            return
        try:
            draft = MessageCreate.model_validate_json(received)
        except ValidationError:  # the route answers it, with its own error
            body: Message = {"type": "http.request", "body": received, "more_body": False}
            await self.app(scope, _replayed([body], receive), send)
            return
        structlog.contextvars.bind_contextvars(user_id=user.id)
        scope["route"] = self._route(scope, SEND_ROUTE, "POST")
        sender = services.message_sender
        try:
            receipt, quota = await sender.send(
                user, room_id, draft.content, key, draft.parent_id, draft.attachment_ids
            )
        except AppError as exc:  # as the app's handler answers it
            await app_error_response(exc)(scope, receive, send)
            return
        quota_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in quota.headers(sender.clock.now()).items()
        ]
        await self._answer(send, _RECEIPT.dump_json(receipt, by_alias=True), quota_headers, 202)

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
        scope["route"] = self._route(scope, template, "GET")  # the metrics' route label
        return body, extra

    @staticmethod
    async def _answer(
        send: Send, body: bytes, extra: list[tuple[bytes, bytes]], status: int = 200
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
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

    def _route(self, scope: Scope, template: str, method: str) -> Any:
        if self._routes is None:
            self._routes = {
                (route.path, verb): route
                for route in scope["app"].routes
                for verb in getattr(route, "methods", None) or ()
                if (getattr(route, "path", None), verb) in _ROUTES
            }
        return self._routes.get((template, method))


async def _whole_body(receive: Receive) -> bytes | list[Message]:
    """The request's body, or the messages received up to the client's disconnect."""
    received: list[Message] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return received
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in received)


def _replayed(messages: list[Message], receive: Receive) -> Receive:
    """`receive` with the messages already read delivered first, for the route."""
    pending = list(messages)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
