"""Share links and account deletion. Services never commit: the request owns the transaction."""

from __future__ import annotations

import secrets
from datetime import UTC
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.attachments.service import Attachments
from gemini_backend.auth.service import AuthService
from gemini_backend.billing.service import BillingService
from gemini_backend.chat import repository as chat_repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.errors import MessageNotFound
from gemini_backend.chat.models import Chatroom
from gemini_backend.chat.schemas import ChatroomCreate, ChatroomOut, message_parts
from gemini_backend.chat.sending import MessageSender
from gemini_backend.chat.service import ChatroomService
from gemini_backend.chat.states import ReplyStatus
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit
from gemini_backend.core.errors import Conflict, NotFound
from gemini_backend.portability import repository as repo
from gemini_backend.portability.imports import ImportInvalid, NodePlan, RoomPlan
from gemini_backend.portability.models import Share
from gemini_backend.portability.schemas import (
    DeleteAccountIn,
    SharedConversation,
    SharedMessage,
    ShareOut,
)
from gemini_backend.users.models import User

if TYPE_CHECKING:
    from gemini_backend.auth.principals import SignedInUser

log = structlog.get_logger(__name__)

# 18 random bytes: 144 bits, 24 URL-safe characters.
SHARE_ID_BYTES = 18


class ShareNotFound(NotFound):
    code = "share_not_found"
    detail = "No such share link (it may have been revoked)."


class NothingToShare(Conflict):
    code = "nothing_to_share"
    detail = "The chatroom has no messages yet."


def _shared_part(part: dict[str, Any]) -> dict[str, Any]:
    """A part as a share shows it: an attachment by its name and type only."""
    if part.get("type") == "attachment":
        return {
            "type": "attachment",
            "media_type": part.get("media_type"),
            "filename": part.get("filename"),
        }
    return part


def _snapshot(row: Any) -> dict[str, Any]:
    parts = [_shared_part(part) for part in message_parts(row.content, row.parts)]
    return {
        "role": "user" if row.role == "user" else "assistant",
        "content": row.content,
        "parts": parts,
        "created_at": row.created_at.isoformat(),
    }


class Shares:
    def __init__(self, session: AsyncSession, clock: Clock, page_base: str) -> None:
        self.session = session
        self.clock = clock
        self.page_base = page_base  # the share page's URL without its id

    def _out(self, share: Share) -> ShareOut:
        return ShareOut(
            share_id=share.id,
            url=f"{self.page_base}{share.id}",
            chatroom_id=share.chatroom_id,
            message_id=share.message_id,
            name=share.name,
            created_at=share.created_at,
        )

    async def create(self, room: Chatroom, message_id: int | None) -> ShareOut:
        """A snapshot of the path from the root to `message_id` (default: the active leaf).
        Replies that did not complete (in progress, failed, cancelled) are left out."""
        target = message_id or room.active_leaf_id
        if target is None:
            raise NothingToShare()
        rows = await chat_repo.branch_up_to(self.session, room.id, target, chat_repo.WHOLE_BRANCH)
        if not rows:
            raise MessageNotFound()
        shown = [r for r in rows if r.role == "user" or r.status == ReplyStatus.COMPLETED]
        share = Share(
            id=secrets.token_urlsafe(SHARE_ID_BYTES),
            chatroom_id=room.id,
            user_id=room.user_id,
            message_id=target,
            name=room.name,
            messages=[_snapshot(row) for row in shown],
            created_at=self.clock.now(),
        )
        await repo.add_share(self.session, share)
        log.info("share_created", share_id=share.id[:6], messages=len(shown))
        return self._out(share)

    async def of_room(self, room_id: int) -> list[ShareOut]:
        return [self._out(share) for share in await repo.room_shares(self.session, room_id)]

    async def read(self, share_id: str) -> SharedConversation:
        share = await repo.share_by_id(self.session, share_id)
        if share is None:
            raise ShareNotFound()
        return SharedConversation(
            share_id=share.id,
            name=share.name,
            messages=[SharedMessage.model_validate(m) for m in share.messages],
            created_at=share.created_at,
        )

    async def revoke(self, user_id: int, share_id: str) -> None:
        if not await repo.delete_share(self.session, user_id, share_id):
            raise ShareNotFound()


class AccountEraser:
    """Deletes an account and everything it owns, once the caller proved who they are again."""

    def __init__(
        self,
        session: AsyncSession,
        auth: AuthService,
        billing: BillingService,
        attachments: Attachments,
        sender: MessageSender,
        cache: ChatroomCache,
    ) -> None:
        self.session = session
        self.auth = auth
        self.billing = billing
        self.attachments = attachments
        self.sender = sender
        self.cache = cache

    async def erase(self, user: User, client_ip: str, proof: DeleteAccountIn) -> None:
        """In order: the re-check (a wrong one deletes nothing), the subscriptions cancelled at
        Stripe (a failure there deletes nothing: no account is left paying with no way in),
        then one transaction that deletes every row; after it commits, the replies in flight
        are told to stop, the stored files go, the caches forget the user."""
        user_id = user.id
        await self.auth.confirm(
            user, client_ip, current_password=proof.current_password, otp=proof.otp
        )
        cancelled = await self.billing.cancel_everything(user_id)
        await self.sender.stop_replies_of(self.session, user_id)
        await self.attachments.delete_with_user(self.session, user_id)
        await self.auth.forget(user)
        await repo.delete_user(self.session, user_id)
        cache = self.cache

        async def forget_lists() -> None:
            await cache.invalidate(user_id)

        after_commit(self.session, forget_lists)
        log.info("account_deleted", user_id=user_id, subscriptions_cancelled=len(cancelled))


class Importer:
    """Writes planned rooms (imports.py) in the request's transaction: a room through the same
    checks as `POST /chatroom` (its options, the room cap), then its messages a tree level at a
    time. No quota slot is taken and no reply is queued."""

    def __init__(self, session: AsyncSession, chat: ChatroomService, clock: Clock) -> None:
        self.session = session
        self.chat = chat
        self.clock = clock

    async def create(self, user: SignedInUser, plans: list[RoomPlan]) -> list[ChatroomOut]:
        out = []
        for index, plan in enumerate(plans):
            try:
                body = ChatroomCreate.model_validate(plan.room)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ImportInvalid(f"item {index}: chatroom.{where}: {first['msg']}") from None
            room_id = (await self.chat.create(user, body)).id
            ids = await self._insert(room_id, plan.nodes)
            leaf = ids.get(plan.active) if plan.active is not None else None
            if leaf is None and ids:
                leaf = max(ids.values())  # the last one inserted: a leaf of the deepest level
            await repo.finish_import(self.session, room_id, leaf, len(ids), self.clock.now())
            room = await chat_repo.owned_room(self.session, user.id, room_id)
            assert room is not None
            await self.session.refresh(room)
            out.append(ChatroomOut.from_row(room))
        log.info("chatrooms_imported", rooms=len(out), messages=sum(len(p.nodes) for p in plans))
        return out

    async def _insert(self, room_id: int, nodes: list[NodePlan]) -> dict[str, int]:
        """The nodes (parents first) in their order, so ids keep it: one statement per run of
        nodes none of which is the parent of another. Their new ids by key."""
        ids: dict[str, int] = {}
        roles = {node.key: node.role for node in nodes}
        run: list[NodePlan] = []
        for node in [*nodes, None]:
            if run and (node is None or (node.parent is not None and node.parent not in ids)):
                rows = [self._row(room_id, n, ids, roles) for n in run]
                inserted = await repo.insert_messages(self.session, rows)
                ids.update(zip([n.key for n in run], inserted, strict=True))
                run = []
            if node is not None:
                run.append(node)
        return ids

    def _row(
        self, room_id: int, node: NodePlan, ids: dict[str, int], roles: dict[str, str]
    ) -> dict[str, Any]:
        now = self.clock.now()
        created = node.created_at or now
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        parent_id = ids[node.parent] if node.parent is not None else None
        answers = node.role == "assistant" and node.parent is not None
        return {
            "chatroom_id": room_id,
            "role": node.role,
            "content": node.content,
            "status": node.status,
            "error": node.error,
            "finish_reason": node.finish_reason,
            "model": node.model,
            "parts": node.parts,
            "parent_id": parent_id,
            "reply_to": parent_id if answers and roles[node.parent or ""] == "user" else None,
            "attempts": 0,
            "quota_day": None,
            "created_at": created,
            "updated_at": now,
            "completed_at": created if node.status == "completed" else None,
        }
