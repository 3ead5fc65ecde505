"""Thin HTTP layer of chatrooms; the rules live in `service.py`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.chat.dependencies import (
    MAX_ID,
    ChatroomServiceDep,
    MessageSenderDep,
    OwnedChatroom,
    RoomMessage,
)
from gemini_backend.chat.replies import reply_events
from gemini_backend.chat.schemas import (
    ChatroomCreate,
    ChatroomDetail,
    ChatroomOut,
    ChatroomPage,
    ChatroomUpdate,
    MessageCreate,
    MessageOut,
    MessagePage,
    SendReceipt,
)
from gemini_backend.core.errors import BadRequest
from gemini_backend.core.openapi import AUTH_ERRORS, BODY_ERRORS, RATE_LIMIT_ERRORS, error_doc

router = APIRouter(prefix="/chatroom", tags=["Chatrooms"], responses=AUTH_ERRORS)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error_doc("No such chatroom, or not yours")}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a chatroom",
    responses=BODY_ERRORS,
)
async def create_chatroom(
    body: ChatroomCreate, user: CurrentUser, chat: ChatroomServiceDep
) -> ChatroomOut:
    return await chat.create(user.id, body)


@router.get(
    "",
    summary="List my chatrooms, newest activity first (cached per user)",
    response_model=ChatroomPage,
    responses={
        200: {"headers": {"X-Cache": {"description": "HIT or MISS", "schema": {"type": "string"}}}},
        400: error_doc("Invalid cursor"),
    },
)
async def list_chatrooms(
    user: CurrentUser,
    chat: ChatroomServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page_key = f"{limit}:{cursor or ''}"
    version = await chat.cache.version(user.id)
    cached = await chat.cache.get(user.id, version, page_key)
    if cached is not None:
        return Response(cached, media_type="application/json", headers={"X-Cache": "HIT"})
    page = await chat.list_page(user.id, limit, cursor)
    body = page.model_dump_json().encode()
    await chat.cache.put(user.id, version, page_key, body)
    return Response(body, media_type="application/json", headers={"X-Cache": "MISS"})


@router.get("/{chatroom_id}", summary="A chatroom with its latest 50 messages", responses=NOT_FOUND)
async def get_chatroom(room: OwnedChatroom, chat: ChatroomServiceDep) -> ChatroomDetail:
    return await chat.detail(room)


@router.patch(
    "/{chatroom_id}",
    summary="Rename a chatroom or change its system prompt",
    responses={**NOT_FOUND, **BODY_ERRORS},
)
async def update_chatroom(
    body: ChatroomUpdate, room: OwnedChatroom, chat: ChatroomServiceDep
) -> ChatroomOut:
    return await chat.update(room, body)


@router.delete(
    "/{chatroom_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a chatroom and its messages",
    responses=NOT_FOUND,
)
async def delete_chatroom(room: OwnedChatroom, chat: ChatroomServiceDep) -> Response:
    await chat.delete(room)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{chatroom_id}/messages",
    summary="Message history, newest page first (each page oldest first)",
    responses=NOT_FOUND,
)
async def list_messages(
    room: OwnedChatroom,
    chat: ChatroomServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="A message id")] = None,
) -> MessagePage:
    return await chat.messages(room, limit, before)


class NotAReply(BadRequest):
    code = "not_a_reply"
    detail = "Only assistant replies have a stream."


@router.post(
    "/{chatroom_id}/message",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a message; the reply is produced by a worker and streamed",
    responses={**NOT_FOUND, **BODY_ERRORS, **RATE_LIMIT_ERRORS},
)
async def send_message(
    body: MessageCreate,
    room: OwnedChatroom,
    user: CurrentUser,
    sender: MessageSenderDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Same key (24 h) = same receipt"),
    ] = None,
) -> SendReceipt:
    receipt, quota = await sender.send(user, room, body.content, idempotency_key)
    response.headers.update(quota.headers(sender.clock.now()))
    return receipt


@router.get(
    "/{chatroom_id}/messages/{message_id}",
    summary="One message (a reply's current state)",
    responses=NOT_FOUND,
)
async def get_message(message: RoomMessage) -> MessageOut:
    return MessageOut.from_row(message)


@router.get(
    "/{chatroom_id}/messages/{message_id}/stream",
    summary="A reply as Server-Sent Events (delta..., then done or error)",
    response_class=EventSourceResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/event-stream": {}}}},
)
async def stream_reply(
    request: Request,
    message: RoomMessage,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> EventSourceResponse:
    if message.role != "assistant":
        raise NotAReply()
    state = request.app.state
    # The request's session ends when this returns: no connection is held while streaming.
    return EventSourceResponse(
        reply_events(
            streams=state.reply_streams,
            sessionmaker=state.database.sessionmaker,
            snapshot=MessageOut.from_row(message),
            last_event_id=last_event_id,
        ),
        ping=15,
    )


@router.post(
    "/{chatroom_id}/messages/{message_id}/cancel",
    summary="Stop a reply (in any process); partial text is kept",
    responses={**NOT_FOUND, 409: error_doc("The reply already finished")},
)
async def cancel_reply(message: RoomMessage, sender: MessageSenderDep) -> MessageOut:
    if message.role != "assistant":
        raise NotAReply()
    return MessageOut.from_row(await sender.cancel(message))


@router.post(
    "/{chatroom_id}/messages/{message_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="A new reply to the same user message (a slot of the daily quota)",
    responses={**NOT_FOUND, **RATE_LIMIT_ERRORS, 409: error_doc("A reply is still in progress")},
)
async def retry_reply(
    room: OwnedChatroom,
    message: RoomMessage,
    user: CurrentUser,
    sender: MessageSenderDep,
    response: Response,
) -> SendReceipt:
    receipt, quota = await sender.retry(user, room, message)
    response.headers.update(quota.headers(sender.clock.now()))
    return receipt
