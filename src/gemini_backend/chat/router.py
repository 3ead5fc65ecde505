"""Thin HTTP layer of chatrooms; the rules live in `service.py`."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from gemini_backend.attachments.errors import (
    AttachmentAlreadySent,
    AttachmentNotFound,
    AttachmentTooLarge,
    TooManyAttachments,
)
from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.chat import repository as repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.dependencies import (
    ChatroomServiceDep,
    ChatroomView,
    MessageSenderDep,
    OwnedChatroom,
    RoomMessage,
)
from gemini_backend.chat.errors import (
    BranchReplyInProgress,
    ChatroomNotFound,
    MessageNotFound,
    ReplyInProgress,
    found_room,
)
from gemini_backend.chat.options import PlanRequired, UnknownModel, UnsupportedOption
from gemini_backend.chat.reads import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ChatroomId,
    PageCursor,
    PageLimit,
    page_key,
)
from gemini_backend.chat.replies import (
    ReplyStreamResponse,
    StreamSlots,
    TooManyStreams,
    needs_replay,
    reply_events,
)
from gemini_backend.chat.schemas import (
    REPLY_EXAMPLE,
    ActiveLeaf,
    ChatroomCreate,
    ChatroomDetail,
    ChatroomOut,
    ChatroomPage,
    ChatroomTree,
    ChatroomUpdate,
    ForkRequest,
    MessageCreate,
    MessageEdit,
    MessageOut,
    MessagePage,
    SendReceipt,
)
from gemini_backend.chat.sending import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    MessageSender,
    MessageTooLong,
    NotAUserMessage,
    NothingToRetry,
    ReplyAlreadyFinished,
)
from gemini_backend.chat.service import (
    ChatroomLimitReached,
    ChatroomService,
    InvalidCursor,
    SystemPromptTooLong,
    message_out,
)
from gemini_backend.core.db import MAX_ID, DbSession
from gemini_backend.core.errors import BackingServiceUnavailable, BadRequest, TooManyRequests
from gemini_backend.core.openapi import (
    AUTH_ERRORS,
    BODY_ERRORS,
    RATE_LIMIT_HEADERS,
    RETRY_AFTER,
    TOKEN_BUDGET_HEADERS,
    Responses,
    error_doc_for,
    header_doc,
    problem,
    validation_doc,
)
from gemini_backend.quota.service import DailyLimitReached, TokenBudgetExceeded
from gemini_backend.services import services_of


class NotAReply(BadRequest):
    code = "not_a_reply"
    detail = "Only assistant replies have a stream."


PATH_PROBLEM = problem(
    "int_parsing",
    ("path", "chatroom_id"),
    "Input should be a valid integer, unable to parse string as an integer",
)
router = APIRouter(
    prefix="/chatroom",
    tags=["Chatrooms"],
    responses={**AUTH_ERRORS, 422: validation_doc(example=PATH_PROBLEM)},
)
# Creating or changing a room with a model and options (chat/options.py).
OPTION_ERRORS: Responses = {
    **BODY_ERRORS,
    **error_doc_for(("A Pro model, or grounding, asked for by a Basic user", PlanRequired)),
    422: validation_doc(
        SystemPromptTooLong,
        UnknownModel,
        UnsupportedOption,
        example=problem(
            "less_than_equal",
            ("body", "temperature"),
            "Input should be less than or equal to 2",
            le="2",
        ),
    ),
}
ROOM_OPTIONS_DOC = (
    "`model` is a model of `GET /models` (null: the default model); `temperature` 0 to 2, "
    '`thinking` "off", "low", "medium", "high" or a budget in tokens, `grounding` (Google '
    "Search) a boolean. An unknown model is 422 `unknown_model`; an option the model does not "
    "support (the room's options as they would be, checked against its model) is 422 "
    "`unsupported_option`; a Pro model, or turning grounding on, as a Basic user is 403 "
    "`plan_required`. A room keeps a Pro model when its owner goes back to Basic; its replies "
    "then come from the default model, without grounding (the reply's `model` says which)."
)

NOT_FOUND: Responses = error_doc_for(("No such chatroom, or not yours", ChatroomNotFound))
MESSAGE_NOT_FOUND: Responses = error_doc_for(
    ("No such chatroom or message, or not yours", ChatroomNotFound, MessageNotFound),
    example=MessageNotFound,
)
NOT_A_REPLY: Responses = error_doc_for(
    ("The message is the user's, not an assistant reply", NotAReply)
)
QUOTA_ERRORS: Responses = error_doc_for(
    ("The Basic plan's daily limit is reached", DailyLimitReached),
    ("the month's token budget is spent", TokenBudgetExceeded),
    ("too many sends in a minute", TooManyRequests),
    detail="The daily limit of 5 messages is reached; it resets at local midnight.",
    note="for the daily limit, `Retry-After` is the seconds to the next local midnight in "
    "QUOTA_TIMEZONE; for the token budget, to 00:00 UTC on the next month's 1st",
    headers={**RETRY_AFTER, **RATE_LIMIT_HEADERS, **TOKEN_BUDGET_HEADERS},
)
RECEIPT_HEADERS: Responses = {
    202: {
        "description": "Accepted: the reply is queued",
        "headers": {**RATE_LIMIT_HEADERS, **TOKEN_BUDGET_HEADERS},
    }
}
# One event of the stream (OpenAPI 3.2's `itemSchema` of a sequential media type, as FastAPI
# documents its own event streams); comment lines are not events.
STREAM_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "Send as Last-Event-ID to resume after it"},
        "event": {"type": "string", "enum": ["delta", "reset", "done", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'JSON: {"text"} for delta, {"attempt"} for reset, the final '
            "message (MessageOut) for done and error",
        },
    },
}
STREAM_EXAMPLE = (
    ": stream open\n\n"
    'id: 1\nevent: delta\ndata: {"text": "Demo reply (context:"}\n\n'
    'id: 2\nevent: delta\ndata: {"text": " 2 earlier messages [39, 40]) to:"}\n\n'
    "id: 3\nevent: done\ndata: " + json.dumps(REPLY_EXAMPLE) + "\n\n"
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a chatroom",
    description=(
        '`name` (alias `title`) may be omitted: the room is called "New chat" until the '
        "first exchange gives it a title. `system_prompt` (at most MAX_SYSTEM_PROMPT_CHARS, "
        "8000, characters after trimming: else 422 `system_prompt_too_long`) steers every "
        "reply in the room. A user has at most MAX_CHATROOMS_PER_USER (1000) rooms.\n\n"
        + "The room's model and options may be set here or later (PATCH): "
        + ROOM_OPTIONS_DOC
    ),
    responses={
        **OPTION_ERRORS,
        **error_doc_for(
            ("The user has the most chatrooms allowed", ChatroomLimitReached),
            detail="You have 1000 chatrooms, the most allowed; delete one to create another.",
        ),
    },
)
async def create_chatroom(
    body: ChatroomCreate, user: CurrentUser, chat: ChatroomServiceDep
) -> ChatroomOut:
    return await chat.create(user, body)


@router.get(
    "",
    summary="List my chatrooms, newest activity first (cached per user)",
    description=(
        "Cursor pagination: pass the `next_cursor` of a page as `cursor` to get the next one; "
        "it is null on the last page. The list is cached per user (CHATROOM_CACHE_TTL, 5 "
        "minutes) and every write that changes it (create, rename, delete, a new message) "
        "invalidates it; `X-Cache` tells whether this answer came from the cache."
    ),
    response_model=ChatroomPage,
    responses={
        200: {"headers": {"X-Cache": header_doc("HIT or MISS")}},
        **error_doc_for(("A cursor this server did not issue", InvalidCursor)),
        422: validation_doc(
            example=problem(
                "less_than_equal",
                ("query", "limit"),
                f"Input should be less than or equal to {MAX_LIMIT}",
                le=str(MAX_LIMIT),
            )
        ),
    },
)
async def list_chatrooms(
    request: Request,
    user: CurrentUser,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> Response:
    state = services_of(request)
    cache: ChatroomCache = state.chatroom_cache
    key = page_key(limit, cursor)
    found = await cache.lookup(user.id, key)
    if found.body is not None:
        return Response(found.body, media_type="application/json", headers={"X-Cache": "HIT"})
    # A miss reads the database on a session of its own: a hit never opens one.
    async with state.database.autocommit_sessionmaker() as session:
        page = await ChatroomService(session, state.clock, cache, state.settings).list_page(
            user.id, limit, cursor
        )
    body = page.model_dump_json().encode()
    await cache.put(user.id, found, key, body)
    return Response(body, media_type="application/json", headers={"X-Cache": "MISS"})


@router.get(
    "/{chatroom_id}",
    summary="A chatroom with its latest 50 messages",
    description=(
        "`messages` are the latest 50, oldest first; older ones are at "
        "`GET /chatroom/{chatroom_id}/messages`. Another user's chatroom is 404."
    ),
    response_model=ChatroomDetail,
    responses=NOT_FOUND,
)
async def get_chatroom(request: Request, user: CurrentUser, chatroom_id: ChatroomId) -> Response:
    state = services_of(request)
    cache: ChatroomCache = state.chatroom_cache
    # The body served last, kept by this process until a change to the user's rooms (in any
    # process) drops it: a hit opens no database session.
    found = cache.room_lookup(user.id, chatroom_id)
    if found.body is None:
        async with state.database.autocommit_sessionmaker() as session:
            room = found_room(await repo.owned_room_view(session, user.id, chatroom_id))
            detail = await ChatroomService(session, state.clock, cache, state.settings).detail(room)
        found.body = detail.model_dump_json().encode()
        cache.room_put(user.id, found, chatroom_id, found.body)
    return Response(found.body, media_type="application/json")


@router.patch(
    "/{chatroom_id}",
    summary="Rename a chatroom, change its system prompt, its model or its options",
    description=(
        "Only the fields sent change. `name` cannot be null; an empty or null `system_prompt` "
        "clears it.\n\n" + ROOM_OPTIONS_DOC
    ),
    responses={**NOT_FOUND, **OPTION_ERRORS},
)
async def update_chatroom(
    body: ChatroomUpdate, room: OwnedChatroom, user: CurrentUser, chat: ChatroomServiceDep
) -> ChatroomOut:
    return await chat.update(room, body, user)


@router.delete(
    "/{chatroom_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a chatroom, its messages and its attachments",
    responses=NOT_FOUND,
)
async def delete_chatroom(
    request: Request,
    room: OwnedChatroom,
    chat: ChatroomServiceDep,
    sender: MessageSenderDep,
    session: DbSession,
) -> Response:
    await sender.stop_replies_in(session, room.id)
    await services_of(request).quota.release_room_tokens(session, room.id)
    await services_of(request).attachments.delete_with_room(session, room.id)
    await chat.delete(room)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{chatroom_id}/messages",
    summary="Message history, newest page first (each page oldest first)",
    description=(
        "Cursor pagination backwards in time: the first page is the latest `limit` messages; "
        "pass its `next_cursor` (a message id) as `before` for older ones. `next_cursor` is "
        "null when there are no older messages."
    ),
    responses=NOT_FOUND,
)
async def list_messages(
    room: ChatroomView,
    chat: ChatroomServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="A message id")] = None,
) -> MessagePage:
    return await chat.messages(room, limit, before)


@router.post(
    "/{chatroom_id}/message",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a message; the reply is produced by a worker and streamed",
    description=(
        "202 Accepted: the user's message is stored and an assistant reply is queued; the "
        "answer is a receipt, not the reply. Follow it at `stream_url` (Server-Sent Events) or "
        "poll `GET /chatroom/{chatroom_id}/messages/{reply_id}`.\n\n"
        "`content` (aliases `message`, `text`) is 1 to MAX_MESSAGE_CHARS (8000) characters "
        "after trimming; it may be empty when `attachment_ids` name files uploaded to this "
        "chatroom (POST /chatroom/{chatroom_id}/attachments) and not sent yet: they become "
        "the message's attachment parts, in that order, and the model receives them. An "
        "`Idempotency-Key` header (per user, 24 h) makes retries safe: the "
        "same key with the same chatroom and text answers the first receipt again and creates "
        "nothing; the same key with another chatroom or text is 422 `idempotency_key_reused`."
        "\n\n"
        "Each send takes a slot of the daily quota: a Basic user's sixth message of the day is "
        "429 `daily_limit_reached` with `Retry-After`. Accepted sends carry `X-RateLimit-Limit`, "
        "`X-RateLimit-Remaining` and `X-RateLimit-Reset` (the first two absent when unlimited)."
    ),
    responses={
        **RECEIPT_HEADERS,
        **error_doc_for(
            ("No such chatroom, or not yours", ChatroomNotFound),
            ("an attachment id that is not one of this chatroom's", AttachmentNotFound),
        ),
        **BODY_ERRORS,
        **error_doc_for(
            (
                "The attachments together are larger than the caller's plan allows for one message",
                AttachmentTooLarge,
            ),
        ),
        422: validation_doc(
            MessageTooLong,
            InvalidIdempotencyKey,
            IdempotencyKeyReused,
            AttachmentAlreadySent,
            TooManyAttachments,
            example=problem("missing", ("body", "content"), "Field required"),
        ),
        **QUOTA_ERRORS,
    },
)
async def send_message(
    body: MessageCreate,
    chatroom_id: ChatroomId,
    user: CurrentUser,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Same key (24 h) = same receipt"),
    ] = None,
) -> SendReceipt:
    # The room is checked by the send itself (in its statement on PostgreSQL), not by a
    # dependency, and the app's sender is taken from its state: the send needs no request
    # session, and each dependency costs FastAPI's resolution on every request.
    sender: MessageSender = services_of(request).message_sender
    receipt, quota = await sender.send(
        user, chatroom_id, body.content, idempotency_key, body.parent_id, body.attachment_ids
    )
    response.headers.update(quota.headers(sender.clock.now()))
    return receipt


@router.get(
    "/{chatroom_id}/messages/{message_id}",
    summary="One message (a reply's current state)",
    description=(
        "A reply goes queued, generating, then completed, failed (with an `error` code), "
        "blocked (safety) or cancelled; text produced before a failure or cancel is kept."
    ),
    responses=MESSAGE_NOT_FOUND,
)
async def get_message(message: RoomMessage, session: DbSession) -> MessageOut:
    return await message_out(session, message)


@router.get(
    "/{chatroom_id}/messages/{message_id}/stream",
    summary="A reply as Server-Sent Events (delta..., then done or error)",
    description=(
        "A `text/event-stream` of the reply's events, each with an `id:`:\n\n"
        '- `delta`: `data: {"text": "..."}`, the next piece of text;\n'
        '- `reset`: `data: {"attempt": n}`, an attempt died and the reply starts over '
        "(drop the text received so far);\n"
        "- then exactly one of `done` (data: the final message) or `error` (data: the message "
        "with its `error` code), and the stream ends.\n\n"
        "Reconnect with the `Last-Event-ID` header to resume after that event without loss or "
        "duplicates. A stream opened after the reply finished replays it whole and ends. "
        "Comment lines (`: ping - <time>`, every 15 s) keep idle connections open."
    ),
    response_class=ReplyStreamResponse,
    responses={
        200: {
            "description": "The reply's events (Server-Sent Events)",
            "content": {
                "text/event-stream": {"itemSchema": STREAM_EVENT, "example": STREAM_EXAMPLE}
            },
        },
        **NOT_A_REPLY,
        **MESSAGE_NOT_FOUND,
        **error_doc_for(
            (
                "The caller has MAX_STREAMS_PER_USER reply streams open on this server",
                TooManyStreams,
            ),
            headers=RETRY_AFTER,
        ),
        **error_doc_for(
            ("Redis, where the reply streams live, does not answer", BackingServiceUnavailable),
            headers=RETRY_AFTER,
        ),
    },
)
async def stream_reply(
    request: Request,
    user: CurrentUser,
    message: RoomMessage,
    session: DbSession,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> ReplyStreamResponse:
    if message.role != "assistant":
        raise NotAReply()
    state = services_of(request)
    # Only a finished reply whose stream has expired is shown from the database (its
    # siblings read); any other streams live from its id.
    replay = None
    if await needs_replay(state.reply_streams, message.id, message.status):
        replay = await message_out(session, message)
    slots: StreamSlots = state.stream_slots
    give_back = slots.take(user.id)
    # The request's session ends when this returns: no connection is held while streaming.
    return ReplyStreamResponse(
        reply_events(
            streams=state.reply_streams,
            sessionmaker=state.database.sessionmaker,
            reply_id=message.id,
            last_event_id=last_event_id,
            replay=replay,
        ),
        on_close=give_back,
    )


@router.post(
    "/{chatroom_id}/messages/{message_id}/cancel",
    summary="Stop a reply (in any process); partial text is kept",
    description=(
        "A queued reply is cancelled at once; a generating one is told to stop and ends "
        "`cancelled` with its partial text shortly after (watch its stream). Cancelling a "
        "cancelled reply again answers it unchanged."
    ),
    responses={
        **NOT_A_REPLY,
        **MESSAGE_NOT_FOUND,
        **error_doc_for(("The reply already finished", ReplyAlreadyFinished)),
    },
)
async def cancel_reply(
    message: RoomMessage, user: CurrentUser, sender: MessageSenderDep, session: DbSession
) -> MessageOut:
    if message.role != "assistant":
        raise NotAReply()
    return await message_out(session, await sender.cancel(session, user.id, message))


@router.post(
    "/{chatroom_id}/messages/{message_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="A new reply to the same user message (a slot of the daily quota)",
    description=(
        "`message_id` is the user message or one of its replies. 202 with a new send receipt, "
        "like sending; it takes a slot of the daily quota and carries the X-RateLimit-* "
        "headers."
    ),
    responses={
        **RECEIPT_HEADERS,
        **error_doc_for(("The reply answers no message of this chatroom", NothingToRetry)),
        **MESSAGE_NOT_FOUND,
        **error_doc_for(("A reply to this message is still in progress", ReplyInProgress)),
        **QUOTA_ERRORS,
    },
)
async def retry_reply(
    room: ChatroomView,
    message: RoomMessage,
    user: CurrentUser,
    sender: MessageSenderDep,
    session: DbSession,
    response: Response,
) -> SendReceipt:
    receipt, quota = await sender.retry(session, user, room, message)
    response.headers.update(quota.headers(sender.clock.now()))
    return receipt


@router.post(
    "/{chatroom_id}/messages/{message_id}/edit",
    status_code=status.HTTP_202_ACCEPTED,
    summary="A new version of a user message, with a new reply (a slot of the daily quota)",
    description=(
        "The new message is a sibling of `message_id` (the same parent) and, with its reply, "
        "becomes the active branch; the old version and everything after it are kept (switch "
        "back with `PUT /chatroom/{chatroom_id}/active`). 202 with a send receipt, like "
        "sending: it takes a slot of the daily quota and carries the X-RateLimit-* headers."
    ),
    responses={
        **RECEIPT_HEADERS,
        **error_doc_for(("The message is an assistant reply", NotAUserMessage)),
        **MESSAGE_NOT_FOUND,
        **error_doc_for(("A reply to this message is still in progress", ReplyInProgress)),
        **BODY_ERRORS,
        422: validation_doc(
            MessageTooLong, example=problem("missing", ("body", "content"), "Field required")
        ),
        **QUOTA_ERRORS,
    },
)
async def edit_message(
    body: MessageEdit,
    room: ChatroomView,
    message: RoomMessage,
    user: CurrentUser,
    sender: MessageSenderDep,
    session: DbSession,
    response: Response,
) -> SendReceipt:
    receipt, quota = await sender.edit(
        session, user, room, message, body.content, body.attachment_ids
    )
    response.headers.update(quota.headers(sender.clock.now()))
    return receipt


@router.put(
    "/{chatroom_id}/active",
    summary="Show another branch (move between versions)",
    description=(
        "`leaf_id` is any message of the chatroom; the active branch becomes the one through "
        "it, followed down its newest replies and messages to a leaf. Answers the chatroom as "
        "`GET /chatroom/{chatroom_id}` does. A reply being produced goes on in its branch."
    ),
    responses={**MESSAGE_NOT_FOUND, **BODY_ERRORS},
)
async def set_active_branch(
    body: ActiveLeaf, room: ChatroomView, chat: ChatroomServiceDep
) -> ChatroomDetail:
    return await chat.set_active(room, body.leaf_id)


@router.get(
    "/{chatroom_id}/tree",
    summary="Every message of the chatroom: the whole conversation tree",
    description=(
        "All messages, oldest first, each with `parent_id` and `sibling_ids`, and the "
        "`active_leaf_id`: a client can draw every branch from this alone."
    ),
    responses=NOT_FOUND,
)
async def get_tree(room: ChatroomView, chat: ChatroomServiceDep) -> ChatroomTree:
    return await chat.tree(room)


@router.post(
    "/{chatroom_id}/fork",
    status_code=status.HTTP_201_CREATED,
    summary="A new chatroom holding the conversation up to a message",
    description=(
        "The new chatroom (named after this one, with ` (fork)`) holds copies of the path from "
        "the first message to `message_id`, and goes on separately; this chatroom is "
        "unchanged. It takes no quota slot; the chatroom limit applies as for creating one."
    ),
    responses={
        **MESSAGE_NOT_FOUND,
        **error_doc_for(
            ("A reply on the path is still in progress", BranchReplyInProgress),
            ("the user has MAX_CHATROOMS_PER_USER chatrooms", ChatroomLimitReached),
        ),
        **BODY_ERRORS,
    },
)
async def fork_chatroom(
    body: ForkRequest, room: ChatroomView, chat: ChatroomServiceDep
) -> ChatroomDetail:
    return await chat.fork(room, body.message_id)
