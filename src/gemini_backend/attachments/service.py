"""Uploading, downloading and sending attachments; the purge of uploads that never finished.

An upload writes its row first (`pending`, in a transaction of its own), then streams the bytes
to the storage, then marks the row `stored`: a process that dies between the two leaves a
pending row naming the object, which the purge deletes (object first, then row) once it is
older than ATTACHMENT_PENDING_MINUTES. A failed upload deletes its row at once."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gemini_backend.ai.base import Attachment as ProviderAttachment
from gemini_backend.attachments import repository as repo
from gemini_backend.attachments.errors import (
    AttachmentAlreadySent,
    AttachmentGone,
    AttachmentInUse,
    AttachmentNotFound,
    AttachmentTooLarge,
    EmptyAttachment,
    TooManyAttachments,
)
from gemini_backend.attachments.models import PENDING, STORED, Attachment
from gemini_backend.attachments.schemas import AttachmentOut
from gemini_backend.attachments.sniff import SNIFF_BYTES, TextCheck, checked_filename, is_text
from gemini_backend.attachments.sniff import sniff as sniff_type
from gemini_backend.attachments.storage import (
    Storage,
    StorageUnavailable,
    StoredObjectMissing,
    new_key,
)
from gemini_backend.attachments.upload import file_part
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit
from gemini_backend.core.errors import NotFound
from gemini_backend.users.tier import Tier

log = structlog.get_logger(__name__)

# What a multipart body carries beyond the file (boundaries, part headers, other fields).
MULTIPART_OVERHEAD = 64 * 1024
PURGE_BATCH = 100
# A noted deletion younger than this is left to the request that noted it (still running).
DELETION_GRACE = timedelta(minutes=1)
# A reply's context budget counts an attachment as (see docs/architecture.md, "Attachments"):
# text, one token per 4 bytes, like message text; an image, Gemini's 258 tokens a tile, a tile
# per started 256 KiB of file; a PDF, 258 tokens a page, a page per started 32 KiB.
TILE_TOKENS = 258
IMAGE_BYTES_PER_TILE = 256 * 1024
PDF_BYTES_PER_PAGE = 32 * 1024


class RoomNotFound(NotFound):
    code = "chatroom_not_found"
    detail = "No such chatroom."


def largest_upload_body(settings: Settings) -> int:
    """The most bytes an upload's body may have on any plan (its route's body limit)."""
    largest = max(settings.attachment_max_bytes, settings.pro_attachment_max_bytes)
    return largest + MULTIPART_OVERHEAD


def attachment_tokens(media_type: str, size: int) -> int:
    if is_text(media_type):
        return max(1, math.ceil(size / 4))
    per = PDF_BYTES_PER_PAGE if media_type == "application/pdf" else IMAGE_BYTES_PER_TILE
    return TILE_TOKENS * max(1, math.ceil(size / per))


def _copy(row: Attachment, message_id: int) -> Attachment:
    """A second row for `row`'s stored bytes, given to `message_id`."""
    return Attachment(
        chatroom_id=row.chatroom_id,
        user_id=row.user_id,
        message_id=message_id,
        filename=row.filename,
        media_type=row.media_type,
        size=row.size,
        sha256=row.sha256,
        storage_key=row.storage_key,
        state=STORED,
        created_at=row.created_at,
    )


class Attachments:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: Storage,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessionmaker = sessionmaker
        self.storage = storage

    # --- limits ---------------------------------------------------------------------------------
    def file_limit(self, tier: Tier) -> int:
        s = self.settings
        return s.pro_attachment_max_bytes if tier == "pro" else s.attachment_max_bytes

    def message_limit(self, tier: Tier) -> int:
        s = self.settings
        if tier == "pro":
            return s.pro_message_attachments_max_bytes
        return s.message_attachments_max_bytes

    # --- upload ---------------------------------------------------------------------------------
    async def upload(
        self,
        user_id: int,
        tier: Tier,
        room_id: int,
        content_type: str,
        declared_length: int | None,
        body: AsyncIterator[bytes],
    ) -> AttachmentOut:
        limit = self.file_limit(tier)
        async with self.sessionmaker() as session:
            if not await repo.room_owned(session, user_id, room_id):
                raise RoomNotFound()
        if declared_length is not None and declared_length > limit + MULTIPART_OVERHEAD:
            raise self._too_large(limit)
        part = await file_part(content_type, body)
        filename = checked_filename(part.filename)
        head, rest = await _head(part.chunks, SNIFF_BYTES)
        if not head:
            raise EmptyAttachment()
        media_type = sniff_type(head, filename)
        key = new_key(room_id)
        async with self.sessionmaker() as session:
            row_id = await repo.add_pending(
                session,
                Attachment(
                    chatroom_id=room_id,
                    user_id=user_id,
                    filename=filename,
                    media_type=media_type,
                    size=0,
                    sha256="",
                    storage_key=key,
                    state=PENDING,
                    created_at=self.clock.now(),
                ),
            )
            await session.commit()
        counted = _Counted(limit, media_type)
        try:
            await self.storage.put(key, counted.chunks(head, rest))
        except AttachmentTooLarge:
            await self._forget(row_id)
            raise self._too_large(limit) from None
        except BaseException:
            await self._forget(row_id)
            raise
        return await self._stored(row_id, key, counted)

    def _too_large(self, limit: int) -> AttachmentTooLarge:
        return AttachmentTooLarge(f"A file may have at most {limit} bytes on your plan.")

    async def _stored(self, row_id: int, key: str, counted: _Counted) -> AttachmentOut:
        async with self.sessionmaker() as session:
            row = await repo.mark_stored(
                session, row_id, size=counted.size, sha256=counted.sha256.hexdigest()
            )
            await session.commit()
            if row is not None:
                return AttachmentOut.from_row(row)
        await self._delete_bytes([key])  # the room went away while the bytes were being stored
        raise AttachmentGone()

    async def _forget(self, row_id: int) -> None:
        try:
            async with self.sessionmaker() as session:
                await repo.forget(session, row_id)
                await session.commit()
        except Exception:
            log.exception("attachment_forget_failed", attachment_id=row_id)  # the purge's now

    # --- download -------------------------------------------------------------------------------
    async def download(
        self, session: AsyncSession, user_id: int, room_id: int, attachment_id: int
    ) -> tuple[Attachment, AsyncIterator[bytes]]:
        """The row and its bytes (the first chunk already read: a missing object is a 404
        here, before the response starts)."""
        row = await repo.owned_stored(session, user_id, room_id, attachment_id)
        if row is None:
            raise AttachmentNotFound()
        chunks = self.storage.read_chunks(row.storage_key)
        try:
            first = await anext(chunks, b"")
        except StoredObjectMissing as exc:
            log.error("attachment_bytes_missing", attachment_id=row.id)
            raise AttachmentNotFound() from exc

        async def whole() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        return row, whole()

    # --- sending --------------------------------------------------------------------------------
    async def check_for_send(
        self, session: AsyncSession, tier: Tier, room_id: int, ids: Sequence[int]
    ) -> list[Attachment]:
        """The attachments named by a send, in its order: of this room (404), stored and not
        sent yet (422), within the message's limits (422, 413)."""
        self._check_count(ids)
        found = {row.id: row for row in await repo.of_room(session, room_id, ids)}
        rows = []
        for attachment_id in ids:
            row = found.get(attachment_id)
            if row is None or row.state != STORED:
                raise AttachmentNotFound(f"No attachment {attachment_id} in this chatroom.")
            if row.message_id is not None:
                raise AttachmentAlreadySent()
            rows.append(row)
        self._check_size(tier, rows)
        return rows

    def _check_count(self, ids: Sequence[int]) -> None:
        if len(ids) > self.settings.max_attachments_per_message:
            raise TooManyAttachments(
                f"A message may have at most {self.settings.max_attachments_per_message} "
                "attachments."
            )
        if len(set(ids)) != len(ids):
            raise AttachmentAlreadySent("The same attachment is named twice.")

    def _check_size(self, tier: Tier, rows: Sequence[Attachment]) -> None:
        limit = self.message_limit(tier)
        if sum(row.size for row in rows) > limit:
            raise AttachmentTooLarge(
                f"The attachments of one message may have at most {limit} bytes on your plan."
            )

    async def link(
        self, session: AsyncSession, rows: Sequence[Attachment], message_id: int
    ) -> None:
        """Give them to the message (in the send's transaction, the room locked)."""
        linked = await repo.link(session, [row.id for row in rows], message_id)
        if linked != len(rows):  # pragma: no cover - the room lock orders concurrent sends
            raise AttachmentAlreadySent()

    async def for_edit(
        self,
        session: AsyncSession,
        tier: Tier,
        room_id: int,
        edited_id: int,
        ids: Sequence[int] | None,
    ) -> tuple[list[Attachment], set[int]]:
        """The attachments of an edit's new version, in order, and the ids of those that are
        the message edited's (kept): `ids` None, every attachment of the message edited; else
        those named, each of the message edited or uploaded in this room and not sent yet
        (checked as a send's), within the message's limits."""
        kept_rows = await repo.of_message(session, edited_id)
        by_id = {row.id: row for row in kept_rows}
        if ids is None:
            return kept_rows, set(by_id)
        self._check_count(ids)
        fresh_ids = [attachment_id for attachment_id in ids if attachment_id not in by_id]
        fresh = await self.check_for_send(session, tier, room_id, fresh_ids) if fresh_ids else []
        by_id.update((row.id, row) for row in fresh)
        rows = [by_id[attachment_id] for attachment_id in ids]
        self._check_size(tier, rows)
        return rows, set(by_id) - set(fresh_ids)

    async def carry(
        self,
        session: AsyncSession,
        rows: Sequence[Attachment],
        kept: set[int],
        message_id: int,
    ) -> list[Attachment]:
        """Give an edit's attachments to its new version `message_id`, in order: one of `kept`
        stays with the message edited (its old version still shows it) and gets a second row
        naming the same stored bytes; any other is linked. The new version's rows."""
        given = [_copy(row, message_id) if row.id in kept else row for row in rows]
        session.add_all(row for row in given if row.id is None)
        await session.flush()
        fresh = [row for row in rows if row.id not in kept]
        if fresh:
            await self.link(session, fresh, message_id)
        return given

    # --- a reply's conversation --------------------------------------------------------------
    async def of_messages(
        self, session: AsyncSession, message_ids: Sequence[int]
    ) -> dict[int, tuple[ProviderAttachment, ...]]:
        """The attachments of these messages as a provider receives them (their bytes read
        from the storage when the provider asks)."""
        by_message: dict[int, list[ProviderAttachment]] = {}
        for row in await repo.of_messages(session, message_ids):
            by_message.setdefault(row.message_id, []).append(self.provider_attachment(row))
        return {message_id: tuple(found) for message_id, found in by_message.items()}

    def provider_attachment(self, row: Any) -> ProviderAttachment:
        key = row.storage_key

        async def read() -> bytes:
            return await self.storage.read(key)

        return ProviderAttachment(
            id=row.id,
            filename=row.filename,
            media_type=row.media_type,
            size=row.size,
            sha256=row.sha256,
            read=read,
        )

    # --- deletion -------------------------------------------------------------------------------
    async def delete_unsent(
        self, session: AsyncSession, user_id: int, room_id: int, attachment_id: int
    ) -> None:
        """An upload the user changed their mind about (not sent with a message yet): its row
        now, its bytes once this transaction commits. One a message has is 409."""
        row = await repo.owned_stored(session, user_id, room_id, attachment_id)
        if row is None:
            raise AttachmentNotFound()
        if row.message_id is not None or not await repo.delete_unsent(session, row):
            raise AttachmentInUse()
        await self.delete_later(session, [row.storage_key])

    async def delete_with_room(self, session: AsyncSession, room_id: int) -> None:
        """The room is being deleted in this transaction (its rows go by cascade): once that
        commits, the bytes go too."""
        await self.delete_later(session, await repo.room_keys(session, room_id))

    async def delete_with_user(self, session: AsyncSession, user_id: int) -> None:
        """The account is being deleted in this transaction: every object it uploaded goes."""
        await self.delete_later(session, await repo.user_keys(session, user_id))

    async def delete_later(self, session: AsyncSession, keys: Sequence[str]) -> None:
        """Note the objects in this transaction (write-ahead), delete them once it commits,
        then forget the notes. Whatever a crash or a storage outage leaves noted, the purge
        deletes later (`purge_deletions`)."""
        # An edit's kept attachment shares its bytes with the original's row: deleted once.
        keys = sorted(set(keys))
        if not keys:
            return
        await repo.note_deletions(session, keys, self.clock.now())

        async def delete_bytes() -> None:
            gone = await self._delete_bytes(keys)
            if gone:
                async with self.sessionmaker() as own:
                    await repo.forget_deletions(own, gone)
                    await own.commit()

        after_commit(session, delete_bytes)

    async def _delete_bytes(self, keys: Sequence[str]) -> list[str]:
        """Delete the objects; the keys of those that went."""
        gone = []
        for key in keys:
            try:
                await self.storage.delete(key)
            except StorageUnavailable:
                log.warning("attachment_bytes_left", storage_key=key)
                continue
            gone.append(key)
        return gone

    async def purge_deletions(self, limit: int = PURGE_BATCH) -> int:
        """Delete the objects still noted for deletion a minute after their note (what a crash
        or an outage left); how many went."""
        cutoff = self.clock.now() - DELETION_GRACE
        total = 0
        while True:
            async with self.sessionmaker() as session:
                due = await repo.due_deletions(session, cutoff, limit)
            if not due:
                return total
            gone = await self._delete_bytes(due)
            if gone:
                async with self.sessionmaker() as session:
                    total += await repo.forget_deletions(session, gone)
                    await session.commit()
            if len(due) < limit or len(gone) < len(due):
                return total

    async def purge_pending(self, limit: int = PURGE_BATCH) -> int:
        """Delete the uploads still pending ATTACHMENT_PENDING_MINUTES after they began: their
        objects, then their rows (a row whose object could not be deleted stays for the next
        purge). How many rows went."""
        cutoff = self.clock.now() - timedelta(minutes=self.settings.attachment_pending_minutes)
        total = 0
        while True:
            async with self.sessionmaker() as session:
                stale = await repo.stale_pending(session, cutoff, limit)
            if not stale:
                return total
            gone = []
            for row_id, key in stale:
                try:
                    await self.storage.delete(key)
                except StorageUnavailable:
                    log.warning("attachment_purge_deferred", storage_key=key)
                    continue
                gone.append(row_id)
            if gone:
                async with self.sessionmaker() as session:
                    total += await repo.delete_pending(session, gone)
                    await session.commit()
            if len(stale) < limit or len(gone) < len(stale):
                return total


class _Counted:
    """An upload's bytes on their way to the storage: counted against the limit, hashed, and
    (a text file) checked to be text all along."""

    def __init__(self, limit: int, media_type: str) -> None:
        self.limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._text = TextCheck() if is_text(media_type) else None

    async def chunks(self, head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield self._count(head)
        async for chunk in rest:
            yield self._count(chunk)
        if self._text is not None:
            self._text.feed(b"", final=True)

    def _count(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.limit:
            raise AttachmentTooLarge()
        self.sha256.update(chunk)
        if self._text is not None:
            self._text.feed(chunk)
        return chunk


async def _head(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `size` bytes (fewer if the file is shorter), and the rest."""
    head = bytearray()
    async for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return bytes(head), chunks
