"""The attachments domain's errors (the upload's, the download's, and a send's)."""

from __future__ import annotations

from gemini_backend.core.errors import (
    AppError,
    BadRequest,
    Conflict,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
)


class AttachmentNotFound(NotFound):
    code = "attachment_not_found"
    detail = "No such attachment in this chatroom."


class UnsupportedAttachmentType(UnsupportedMediaType):
    code = "unsupported_media_type"
    detail = (
        "The file is not one of the accepted types (PNG, JPEG, WebP, GIF, HEIC/HEIF, PDF, "
        "UTF-8 plain text, Markdown, CSV); the type is read from its bytes."
    )


class AttachmentTooLarge(AppError):
    status_code = 413
    code = "attachment_too_large"
    detail = "The file is larger than your plan allows."


class EmptyAttachment(ValidationFailed):
    code = "empty_attachment"
    detail = "The file is empty."


class InvalidFilename(ValidationFailed):
    code = "invalid_filename"
    detail = (
        "The file name must be 1 to 255 characters without path separators or control characters."
    )


class FileRequired(ValidationFailed):
    code = "file_required"
    detail = "Send the file as the multipart/form-data field `file`."


class MalformedUpload(BadRequest):
    code = "malformed_upload"
    detail = "The body is not a valid multipart/form-data upload."


class AttachmentAlreadySent(ValidationFailed):
    code = "attachment_already_sent"
    detail = "That attachment was already sent with another message; upload it again."


class AttachmentInUse(Conflict):
    code = "attachment_in_use"
    detail = (
        "That attachment was sent with a message: it stays with the message, and goes when its "
        "chatroom or your account is deleted."
    )


class TooManyAttachments(ValidationFailed):
    code = "too_many_attachments"
    detail = "Too many attachments for one message."


class AttachmentGone(NotFound):
    code = "attachment_not_found"
    detail = "The upload was dropped before it finished (its chatroom was deleted, or it expired)."
