"""Thin HTTP layer of attachments; the rules live in `service.py`."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import StreamingResponse

from gemini_backend.attachments.errors import (
    AttachmentInUse,
    AttachmentNotFound,
    AttachmentTooLarge,
    EmptyAttachment,
    FileRequired,
    InvalidFilename,
    MalformedUpload,
    UnsupportedAttachmentType,
)
from gemini_backend.attachments.schemas import AttachmentOut
from gemini_backend.attachments.service import Attachments, RoomNotFound
from gemini_backend.attachments.sniff import MEDIA_TYPES
from gemini_backend.attachments.storage import StorageUnavailable
from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.db import MAX_ID, DbSession
from gemini_backend.core.openapi import (
    AUTH_ERRORS,
    Responses,
    error_doc_for,
    problem,
    validation_doc,
)
from gemini_backend.services import services_of
from gemini_backend.users.tier import tier_of

PATH_PROBLEM = problem(
    "int_parsing",
    ("path", "chatroom_id"),
    "Input should be a valid integer, unable to parse string as an integer",
)
router = APIRouter(
    prefix="/chatroom",
    tags=["Attachments"],
    responses={**AUTH_ERRORS, 422: validation_doc(example=PATH_PROBLEM)},
)

UPLOAD_SUFFIX = "/attachments"  # the upload's path ends so: its body limit is its own (main.py)
RoomId = Annotated[int, Path(ge=1, le=MAX_ID, description="Chatroom id")]
AttachmentId = Annotated[int, Path(ge=1, le=MAX_ID, description="Attachment id")]

UPLOAD_ERRORS: Responses = {
    **error_doc_for(("The body is not multipart/form-data", MalformedUpload)),
    **error_doc_for(("No such chatroom, or not yours", RoomNotFound)),
    **error_doc_for(
        ("The file is larger than the caller's plan allows", AttachmentTooLarge),
    ),
    **error_doc_for(("The bytes are none of the accepted types", UnsupportedAttachmentType)),
    422: validation_doc(FileRequired, EmptyAttachment, InvalidFilename, example=PATH_PROBLEM),
    **error_doc_for(
        ("The file store is unavailable", StorageUnavailable), note="nothing was stored"
    ),
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _attachments(request: Request) -> Attachments:
    found: Attachments = services_of(request).attachments
    return found


@router.post(
    "/{chatroom_id}/attachments",
    status_code=status.HTTP_201_CREATED,
    summary="Upload a file to a chatroom",
    description=(
        "The file as the multipart/form-data field `file`, streamed to the file store as it "
        "arrives. Its type is read from its bytes: PNG, JPEG, WebP, GIF, HEIC/HEIF, PDF, or "
        "UTF-8 text (text/markdown for `.md`, text/csv for `.csv`, else text/plain); anything "
        "else is 415. At most ATTACHMENT_MAX_BYTES (10 MiB; PRO_ATTACHMENT_MAX_BYTES, 50 MiB, "
        "on Pro). Send it with a message by naming its id in `attachment_ids`."
    ),
    responses=UPLOAD_ERRORS,
    openapi_extra=UPLOAD_BODY,
)
async def upload_attachment(
    request: Request, user: CurrentUser, chatroom_id: RoomId
) -> AttachmentOut:
    service = _attachments(request)
    length = request.headers.get("content-length")
    return await service.upload(
        user.id,
        tier_of(user, service.clock.now(), service.settings),
        chatroom_id,
        request.headers.get("content-type", ""),
        int(length) if length and length.isdigit() else None,
        request.stream(),
    )


@router.get(
    "/{chatroom_id}/attachments/{attachment_id}",
    summary="Download an attachment",
    description=(
        "The file's bytes with its media type, as a download (`Content-Disposition: "
        "attachment`, `X-Content-Type-Options: nosniff`). Another user's is 404."
    ),
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file",
            "content": {
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in MEDIA_TYPES
            },
        },
        **error_doc_for(("No such chatroom or attachment, or not yours", AttachmentNotFound)),
    },
)
async def download_attachment(
    request: Request,
    user: CurrentUser,
    chatroom_id: RoomId,
    attachment_id: AttachmentId,
    session: DbSession,
) -> StreamingResponse:
    row, chunks = await _attachments(request).download(session, user.id, chatroom_id, attachment_id)
    media_type = row.media_type + ("; charset=utf-8" if row.media_type.startswith("text/") else "")
    return StreamingResponse(
        chunks,
        media_type=media_type,
        headers={
            "Content-Length": str(row.size),
            "Content-Disposition": content_disposition(row.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


@router.delete(
    "/{chatroom_id}/attachments/{attachment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an attachment not sent yet",
    description=(
        "An upload no message has yet (the user removed it before sending): the file and its "
        "bytes go. One sent with a message is 409: it goes with its chatroom or the account."
    ),
    responses={
        **error_doc_for(("No such chatroom or attachment, or not yours", AttachmentNotFound)),
        **error_doc_for(("The attachment was sent with a message", AttachmentInUse)),
    },
)
async def delete_attachment(
    request: Request,
    user: CurrentUser,
    chatroom_id: RoomId,
    attachment_id: AttachmentId,
    session: DbSession,
) -> Response:
    await _attachments(request).delete_unsent(session, user.id, chatroom_id, attachment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII stand-in for old clients, the real name as RFC 8187 UTF-8."""
    fallback = "".join(
        char if char.isascii() and char.isprintable() and char not in '"\\;' else "_"
        for char in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
