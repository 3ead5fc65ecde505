"""Share links and account deletion over HTTP; the rules live in `service.py`."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from gemini_backend.auth.dependencies import (
    AuthServiceDep,
    ClientIp,
    CurrentUser,
    CurrentUserRecord,
)
from gemini_backend.auth.service import ConfirmationRequired, InvalidCredentials, LoginLocked
from gemini_backend.billing.service import (
    BillingService,
    PaymentProviderError,
    PaymentsUnavailable,
)
from gemini_backend.chat.dependencies import (
    ChatroomServiceDep,
    ChatroomView,
    MessageSenderDep,
    OwnedChatroom,
)
from gemini_backend.chat.errors import ChatroomNotFound, MessageNotFound
from gemini_backend.chat.options import PlanRequired, UnknownModel, UnsupportedOption
from gemini_backend.chat.service import ChatroomLimitReached, SystemPromptTooLong
from gemini_backend.core.db import DbSession
from gemini_backend.core.errors import Unauthorized, UnsupportedMediaType
from gemini_backend.core.openapi import (
    AUTH_ERRORS,
    BODY_ERRORS,
    RETRY_AFTER,
    Responses,
    error_doc_for,
    problem,
    validation_doc,
)
from gemini_backend.core.security import ExpiredToken, HashingBusy, InvalidToken
from gemini_backend.portability import exports
from gemini_backend.portability.imports import ImportInvalid, ImportTooLarge, plan_import
from gemini_backend.portability.schemas import (
    DeleteAccountIn,
    ImportedChatrooms,
    ShareCreate,
    SharedConversation,
    ShareId,
    ShareList,
    ShareOut,
)
from gemini_backend.portability.service import (
    AccountEraser,
    Importer,
    NothingToShare,
    ShareNotFound,
    Shares,
)
from gemini_backend.services import services_of

router = APIRouter(tags=["Sharing and your data"])

SHARE_PAGE = "/s/"  # the web client's page for a share (web/router.py)
IMPORT_PATH = "/chatroom/import"  # its body limit is IMPORT_MAX_BYTES (main.py)


async def _shares(request: Request, session: DbSession) -> Shares:
    state = services_of(request)
    return Shares(session, state.clock, f"{state.settings.base_url}{SHARE_PAGE}")


SharesDep = Annotated[Shares, Depends(_shares)]
SharePath = Annotated[ShareId, Path(description="The id of a share link.")]

ROOM_NOT_FOUND: Responses = error_doc_for(("No such chatroom, or not yours", ChatroomNotFound))
SHARE_NOT_FOUND: Responses = error_doc_for(("No such share link, or revoked", ShareNotFound))
ROOM_PATH_422 = validation_doc(
    example=problem(
        "int_parsing",
        ("path", "chatroom_id"),
        "Input should be a valid integer, unable to parse string as an integer",
    )
)
SHARE_PATH_PROBLEM = problem(
    "string_too_short",
    ("path", "share_id"),
    "String should have at least 16 characters",
    min_length="16",
)


@router.post(
    "/chatroom/{chatroom_id}/share",
    status_code=status.HTTP_201_CREATED,
    summary="Make a public, read-only link to a snapshot of the conversation",
    description=(
        "The snapshot is the path from the first message to `message_id` (default: the active "
        "leaf), as it is now: later messages, edits, retries or a rename do not change it. "
        "Replies that did not complete are left out; attachments are shown by name and type "
        "only. Anyone with the link can read it (`GET /share/{share_id}`) without signing in; "
        "the id has 144 random bits. Deleting the room or the account deletes its links."
    ),
    responses={
        **AUTH_ERRORS,
        **BODY_ERRORS,
        **error_doc_for(
            ("No such chatroom or message, or not yours", ChatroomNotFound, MessageNotFound)
        ),
        **error_doc_for(("The room has no messages", NothingToShare)),
        422: ROOM_PATH_422,
    },
)
async def create_share(
    room: OwnedChatroom, shares: SharesDep, body: ShareCreate | None = Body(default=None)
) -> ShareOut:
    return await shares.create(room, body.message_id if body else None)


@router.get(
    "/chatroom/{chatroom_id}/shares",
    summary="The room's share links, newest first",
    responses={**AUTH_ERRORS, **ROOM_NOT_FOUND, 422: ROOM_PATH_422},
)
async def list_shares(room: ChatroomView, shares: SharesDep) -> ShareList:
    return ShareList(shares=await shares.of_room(room.id))


@router.get(
    "/share/{share_id}",
    summary="A shared conversation (public: no sign-in)",
    description=(
        "The snapshot: the room's name then, and its messages with role, content and parts. "
        "Nothing of the owner (no user id, no number) and no file. Not cached, so a revoked "
        "link is gone at once."
    ),
    responses={**SHARE_NOT_FOUND, 422: validation_doc(example=SHARE_PATH_PROBLEM)},
)
async def read_share(
    share_id: SharePath, shares: SharesDep, response: Response
) -> SharedConversation:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return await shares.read(share_id)


@router.delete(
    "/share/{share_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a share link (the owner's)",
    responses={
        **AUTH_ERRORS,
        **error_doc_for(("No such share link, or not yours", ShareNotFound)),
        422: validation_doc(example=SHARE_PATH_PROBLEM),
    },
)
async def revoke_share(share_id: SharePath, user: CurrentUser, shares: SharesDep) -> Response:
    await shares.revoke(user.id, share_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


EXPORT_DOC = (
    "`format=json` (the default): the whole tree, every message with `parent_id`, `parts`, "
    "`status` and usage, the room's options and `active_leaf_id`, and the attachments' "
    "metadata (not their bytes); `POST /chatroom/import` reads it back. `format=markdown`: the "
    "active branch as a Markdown document. A download (`Content-Disposition: attachment`)."
)


def _download(filename: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    }


@router.get(
    "/chatroom/{chatroom_id}/export",
    summary="Download a chatroom: its whole tree as JSON, or its active branch as Markdown",
    description=EXPORT_DOC,
    response_class=Response,
    responses={
        **AUTH_ERRORS,
        **ROOM_NOT_FOUND,
        422: ROOM_PATH_422,
        200: {
            "description": "The document",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/markdown": {"schema": {"type": "string"}},
            },
        },
    },
)
async def export_chatroom(
    room: OwnedChatroom,
    session: DbSession,
    format: Annotated[Literal["json", "markdown"], Query(description="json or markdown")] = "json",
) -> Response:
    if format == "markdown":
        text = await exports.room_markdown(session, room)
        return Response(
            text,
            media_type="text/markdown; charset=utf-8",
            headers=_download(f"chatroom-{room.id}.md"),
        )
    document = await exports.room_document(session, room)
    return Response(
        json.dumps(document, ensure_ascii=False, indent=1),
        media_type="application/json",
        headers=_download(f"chatroom-{room.id}.json"),
    )


@router.get(
    "/user/export",
    tags=["User"],
    summary="Download every chatroom of the account (NDJSON, streamed)",
    description=(
        "One line per chatroom, each the JSON of `GET /chatroom/{id}/export`, oldest room "
        "first. Streamed as it is read, room by room, so any size of account can be exported. "
        "`POST /chatroom/import` reads it back."
    ),
    response_class=StreamingResponse,
    responses={
        **AUTH_ERRORS,
        200: {
            "description": "The rooms, one JSON document a line",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
    },
)
async def export_account(request: Request, user: CurrentUser) -> StreamingResponse:
    sessionmaker = services_of(request).database.autocommit_sessionmaker
    return StreamingResponse(
        exports.account_lines(sessionmaker, user.id),
        media_type="application/x-ndjson",
        headers=_download("gemini-backend-export.ndjson"),
    )


IMPORT_TYPES = {"application/json": False, "application/x-ndjson": True}
IMPORT_DOC = (
    "The body is the file itself, `Content-Type: application/json` or "
    "`application/x-ndjson`: a room exported by `GET /chatroom/{id}/export` (or a JSON list of "
    "them), the account's NDJSON from `GET /user/export`, or ChatGPT's `conversations.json` "
    "(a list of conversations, each a `mapping` of nodes with `parent`, `children` and a "
    "`message`, and a `current_node`). Every branch is kept, with new ids; the active branch "
    "is the export's `active_leaf_id` or ChatGPT's `current_node`. ChatGPT's system, tool and "
    "empty nodes are left out (their children move up to the nearest message kept). "
    "Attachments come back as their name and type, without the file. Imported messages take "
    "no quota and no reply is generated. Up to IMPORT_MAX_BYTES (10 MiB) and "
    "IMPORT_MAX_MESSAGES (20,000) messages, branches up to 2,000 deep; anything malformed or "
    "beyond (a parent not in the file, a cycle, wrong types) is refused and creates nothing."
)


@router.post(
    IMPORT_PATH,
    status_code=status.HTTP_201_CREATED,
    summary="Import conversations: an export of this service, or ChatGPT's conversations.json",
    description=IMPORT_DOC,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": ["object", "array"]}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
    responses={
        **AUTH_ERRORS,
        **error_doc_for(("A Pro model in an imported room, for a Basic user", PlanRequired)),
        **error_doc_for(("The rooms would pass MAX_CHATROOMS_PER_USER", ChatroomLimitReached)),
        **error_doc_for(
            ("The body is larger than IMPORT_MAX_BYTES or holds too many messages", ImportTooLarge),
        ),
        **error_doc_for(("Neither JSON nor NDJSON", UnsupportedMediaType)),
        422: validation_doc(
            ImportInvalid,
            UnknownModel,
            UnsupportedOption,
            SystemPromptTooLong,
            example=problem("value_error", ("body",), "item 0: the messages' parents form a cycle"),
        ),
    },
)
async def import_chatrooms(
    request: Request, user: CurrentUser, chat: ChatroomServiceDep, session: DbSession
) -> ImportedChatrooms:
    state = services_of(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in IMPORT_TYPES:
        raise UnsupportedMediaType("Send the file as application/json or application/x-ndjson.")
    body = await request.body()
    if len(body) > state.settings.import_max_bytes:
        raise ImportTooLarge()
    plans = await anyio.to_thread.run_sync(
        functools.partial(
            plan_import,
            body,
            ndjson=IMPORT_TYPES[kind],
            max_messages=state.settings.import_max_messages,
        )
    )
    rooms = await Importer(session, chat, state.clock).create(user, plans)
    return ImportedChatrooms(chatrooms=rooms)


async def _eraser(
    request: Request, session: DbSession, auth: AuthServiceDep, sender: MessageSenderDep
) -> AccountEraser:
    state = services_of(request)
    billing = BillingService(
        session, state.settings, state.stripe, state.clock.now(), state.principals
    )
    return AccountEraser(session, auth, billing, state.attachments, sender, state.chatroom_cache)


@router.delete(
    "/user/me",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["User"],
    summary="Delete the account and everything it owns",
    description=(
        "Needs proof again: `current_password`, or a fresh sign-in code (`POST "
        "/auth/send-otp`) as `otp`; a wrong one is 401 `invalid_credentials` (counted as a "
        "failed sign-in attempt) and deletes nothing. Then any live subscription is cancelled "
        "at Stripe at once (if Stripe cannot be reached: 502, nothing deleted), and the "
        "account's rooms, messages, files, share links, sessions, codes, usage and "
        "subscription rows are deleted; replies in progress stop. Every access and refresh "
        "token of the account is 401 from then on. What is kept, and why: docs/privacy.md."
    ),
    responses={
        **error_doc_for(
            (
                "Missing, invalid, expired or revoked access token",
                Unauthorized,
                InvalidToken,
                ExpiredToken,
            ),
            ("a wrong password or code", InvalidCredentials),
            example=InvalidCredentials,
            headers=AUTH_ERRORS[401]["headers"],
        ),
        **BODY_ERRORS,
        422: validation_doc(
            ConfirmationRequired,
            example=problem(
                "string_pattern_mismatch",
                ("body", "otp"),
                "String should match pattern '^\\d{6}$'",
                pattern="^\\d{6}$",
            ),
        ),
        **error_doc_for(
            ("Too many failed attempts on this number", LoginLocked),
            note="see Retry-After",
            headers=RETRY_AFTER,
        ),
        **error_doc_for(("Stripe could not cancel the subscription", PaymentProviderError)),
        **error_doc_for(
            (
                "Payments are not configured, so a live subscription cannot be cancelled",
                PaymentsUnavailable,
            ),
            ("too many password hashes waiting", HashingBusy),
            headers=RETRY_AFTER,
        ),
    },
)
async def delete_account(
    user: CurrentUserRecord,
    eraser: Annotated[AccountEraser, Depends(_eraser)],
    ip: ClientIp,
    body: DeleteAccountIn | None = Body(default=None),
) -> Response:
    await eraser.erase(user, ip, body or DeleteAccountIn())
    return Response(status_code=status.HTTP_204_NO_CONTENT)
