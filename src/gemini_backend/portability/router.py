"""Share links and account deletion over HTTP; the rules live in `service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response, status

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
from gemini_backend.chat.dependencies import ChatroomView, MessageSenderDep, OwnedChatroom
from gemini_backend.chat.errors import ChatroomNotFound, MessageNotFound
from gemini_backend.core.db import DbSession
from gemini_backend.core.errors import Unauthorized
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
from gemini_backend.portability.schemas import (
    DeleteAccountIn,
    ShareCreate,
    SharedConversation,
    ShareId,
    ShareList,
    ShareOut,
)
from gemini_backend.portability.service import (
    AccountEraser,
    NothingToShare,
    ShareNotFound,
    Shares,
)
from gemini_backend.services import services_of

router = APIRouter(tags=["Sharing and your data"])

SHARE_PAGE = "/s/"  # the web client's page for a share (web/router.py)


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
