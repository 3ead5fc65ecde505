"""Producing one reply (the job a worker runs): claim it, rebuild the conversation, stream from
the provider into the reply stream, write the outcome. Every database step is its own short
transaction: no connection is held while the provider is streaming. The statements are in
chat/repository.py; worker/runtime.py registers `ReplyGenerator.run` as the job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gemini_backend.ai.base import Attachment as ProviderAttachment
from gemini_backend.ai.base import (
    Citations,
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    Provider,
    ProviderError,
    Thought,
    Turn,
    Usage,
    estimate_tokens,
)
from gemini_backend.ai.registry import ProviderRegistry
from gemini_backend.attachments.service import Attachments, attachment_tokens
from gemini_backend.chat import repository as repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.options import RoomOptions, reply_settings, thinking_value
from gemini_backend.chat.repository import ReplyRoom
from gemini_backend.chat.schemas import MessageOut
from gemini_backend.chat.states import ReplyStatus, cancel_key
from gemini_backend.config import Settings
from gemini_backend.core.batching import GroupCommit
from gemini_backend.core.cache import Cache
from gemini_backend.core.clock import Clock
from gemini_backend.core.metrics import (
    JOB_LAG,
    PROVIDER_ATTEMPTS,
    PROVIDER_LATENCY,
    REPLIES,
    TIME_TO_FIRST_TOKEN,
)
from gemini_backend.core.streams import FinalCommands, ReplyStream
from gemini_backend.quota.service import Quota
from gemini_backend.users.tier import tier_for

log = structlog.get_logger(__name__)

CANCEL_POLL_SECONDS = 0.25
# The most claims (and finishes) one statement writes: a worker's replies in flight that
# reached the same step while the previous statement of that step was running.
BATCH_MAX = 64


@dataclass(frozen=True, slots=True)
class Claim:
    reply_id: int
    attempt: int
    chatroom_id: int
    user_message_id: int | None
    user_id: int | None = None  # the room's owner (None: the room is gone)


@dataclass(frozen=True, slots=True)
class Serving:
    """Who answers a reply and how: the provider of the room's model (the default model's when
    the room has none, or its owner's plan no longer allows it), the room's options, and the
    model's context window."""

    provider: Provider
    options: GenerationOptions
    context_tokens: int | None = None


@dataclass
class Outcome:
    status: str
    text: str
    error: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    thoughts: str = ""  # the thought summary, kept apart from the text
    citations: Citations | None = None

    def parts(self) -> list[dict[str, Any]] | None:
        """The reply's parts (`messages.parts`): [thought?, text?, citation?]; None when it is
        its text alone."""
        if not self.thoughts and self.citations is None:
            return None
        parts: list[dict[str, Any]] = []
        if self.thoughts:
            parts.append({"type": "thought", "text": self.thoughts})
        if self.text:
            parts.append({"type": "text", "text": self.text})
        if self.citations is not None:
            parts.append(citation_part(self.citations))
        return parts


def citation_part(citations: Citations) -> dict[str, Any]:
    """Citations as a stored part, and as the `citations` event's data (without the type)."""
    return {"type": "citation", **asdict(citations)}


_TEXT_EVENTS = frozenset({"delta", "thought"})  # consecutive ones are joined into one event


class _DeltaWriter:
    """Appends a reply's text (and thoughts, citations) to its stream as it arrives, without
    waiting for Redis between chunks: a chunk goes out at once when no append is in flight;
    chunks that arrive during an append go out together, one event per run of the same kind,
    right after it. A slow model's chunks each get their own event; a fast one's are batched
    instead of costing a round trip each."""

    def __init__(self, streams: ReplyStream, reply_id: int) -> None:
        self._streams = streams
        self._reply_id = reply_id
        # (event, text) for delta and thought, (event, JSON data) for the others.
        self._pending: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, text: str, event: str = "delta") -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # an append failed: raise it here, in the generating task
        self._pending.append((event, text))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch = list(self._pending)
            self._pending.clear()
            for event, data in _joined(batch):
                await self._streams.append(self._reply_id, event, data)

    async def flush(self) -> None:
        if self._task is not None:
            await self._task


def _joined(batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The events of a batch: each run of deltas (or thoughts) as one `{"text"}` event."""
    events: list[tuple[str, str]] = []
    run: list[str] = []
    for index, (event, data) in enumerate(batch):
        if event not in _TEXT_EVENTS:
            events.append((event, data))
            continue
        run.append(data)
        following = batch[index + 1][0] if index + 1 < len(batch) else None
        if following != event:
            events.append((event, json.dumps({"text": "".join(run)})))
            run = []
    return events


class _Progress:
    """What the attempts at one reply have produced so far, and when its upkeep is due."""

    def __init__(self, started: float, deltas: _DeltaWriter, heartbeat_at: float) -> None:
        self.started = started
        self.deltas = deltas
        self.parts: list[str] = []
        self.thoughts: list[str] = []
        self.citations: Citations | None = None
        self.heartbeat_at = heartbeat_at
        # The first look for a cancel request comes one interval after the claim, not at the
        # first chunk: a short reply then costs no cache read at all.
        self.cancel_checked_at = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def produced(self) -> bool:
        """Whether a client may already show something of the reply (no retry then)."""
        return bool(self.parts or self.thoughts)

    def add(self, text: str, provider: str) -> None:
        if not self.parts:
            TIME_TO_FIRST_TOKEN.labels(provider).observe(time.perf_counter() - self.started)
        self.parts.append(text)
        self.deltas.add(text)

    def add_thought(self, text: str) -> None:
        self.thoughts.append(text)
        self.deltas.add(text, "thought")

    def add_citations(self, citations: Citations) -> None:
        self.citations = citations
        data = {k: v for k, v in citation_part(citations).items() if k != "type"}
        self.deltas.add(json.dumps(data), "citations")

    def outcome(self, status: str, error: str | None = None) -> Outcome:
        """The reply as it stands (text, thoughts and citations so far) ending in `status`."""
        return Outcome(
            status,
            self.text,
            error=error,
            thoughts="".join(self.thoughts),
            citations=self.citations,
        )

    def finished(self, item: Finished) -> Outcome:
        status = ReplyStatus.BLOCKED if item.blocked else ReplyStatus.COMPLETED
        outcome = self.outcome(status, "safety_block" if item.blocked else None)
        outcome.finish_reason = item.finish_reason
        outcome.usage = item.usage
        return outcome


def _take(progress: _Progress, item: Delta | Thought | Citations, provider: str) -> None:
    """One streamed item into the reply: text, a thought, or the citations."""
    if isinstance(item, Citations):
        progress.add_citations(item)
    elif isinstance(item, Thought):
        if item.text:
            progress.add_thought(item.text)
    elif item.text:
        progress.add(item.text, provider)


class ReplyGenerator:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        sessionmaker: async_sessionmaker[AsyncSession],
        autocommit_sessionmaker: async_sessionmaker[AsyncSession],
        models: ProviderRegistry,
        streams: ReplyStream,
        cache: Cache,
        quota: Quota,
        chatrooms: ChatroomCache,
        statements: repo.ChatStatements,
        attachments: Attachments,
    ) -> None:
        self.sql = statements
        self.attachments = attachments
        self.settings = settings
        self.clock = clock
        self.sessionmaker = sessionmaker
        # One-statement writes (the claim, a completed finish) and reads: no BEGIN/COMMIT
        # round trips on PostgreSQL.
        self.autocommit_sessionmaker = autocommit_sessionmaker
        self.models = models
        # The default model's: titles, and the rooms without a model of their own.
        self.provider: Provider = models.default_provider
        self.streams = streams
        self.cache = cache
        self.quota = quota
        self.chatrooms = chatrooms
        # How often a generating reply looks for a cancel request (a cache read).
        self.cancel_poll_seconds = CANCEL_POLL_SECONDS
        # Claims and one-statement finishes of the replies in flight, written together when
        # they meet (a lone one at once): one round trip for many replies under load.
        self.claims: GroupCommit[int, int, tuple[repo.ClaimedReply, datetime] | None] = GroupCommit(
            self._claim_batch, missing=None, max_batch=BATCH_MAX
        )
        self.finishes: GroupCommit[tuple[int, int], dict[str, Any], Any] = GroupCommit(
            self._finish_batch, missing=None, max_batch=BATCH_MAX
        )

    # --- the job --------------------------------------------------------------------------------
    async def run(self, reply_id: int, final_commands: FinalCommands | None = None) -> None:
        """`final_commands`: added to the final event's round trip (when there is one)."""
        claimed = await self._claim(reply_id)
        if claimed is None:
            log.info("reply_claim_skipped", reply_id=reply_id)
            return
        claim, conversation, room, serving = claimed
        structlog.contextvars.bind_contextvars(reply_id=reply_id, chatroom_id=claim.chatroom_id)
        if claim.attempt > 1:
            # An earlier attempt died part-way: its chunks are void. Clients are told to start over.
            await self.streams.clear(reply_id)
            await self.streams.append(reply_id, "reset", json.dumps({"attempt": claim.attempt}))
        # A room still called "New chat" gets a title from its first exchange, made alongside
        # the reply (a second, cheap call) so the reply does not wait for it.
        titling = None
        if room is not None and room.auto_title and len(conversation.turns) == 1:
            titling = asyncio.create_task(self._title(room.id, room.user_id, conversation.prompt))
        outcome = await self._generate(claim, conversation, serving)
        if titling is not None:
            await titling
        await self._finish(claim, outcome, serving.provider.model, final_commands)

    async def _title(self, room_id: int, user_id: int, first_message: str) -> None:
        try:
            title = (await self.provider.title(first_message)).strip()[:200]
            if not title:
                return
            async with self.autocommit_sessionmaker() as session:
                changed = await repo.set_auto_title(session, room_id, title)
                await session.commit()
            if changed:
                await self.chatrooms.invalidate(user_id)
        except Exception:
            log.exception("title_failed", chatroom_id=room_id)

    async def _claim(
        self, reply_id: int
    ) -> tuple[Claim, Conversation, ReplyRoom | None, Serving] | None:
        """Take the reply (a conditional UPDATE: a duplicate delivery finds nothing to take), then
        read its room and conversation. The claim is one statement, committed on its own: if
        this worker dies before it finishes, the reply stays `generating` without heartbeats and
        the sweeper queues it again after REPLY_STALE_SECONDS. On PostgreSQL the reads are part
        of that statement."""
        taken = await self.claims.submit(reply_id, reply_id)
        if taken is None:
            return None
        claimed, now = taken
        room, created_at = claimed.room, claimed.created_at
        claim = Claim(
            reply_id,
            claimed.attempts,
            claimed.room_id,
            claimed.user_message_id,
            room.user_id if room else None,
        )
        if claim.attempt == 1:
            JOB_LAG.observe(max(0.0, (now - created_at).total_seconds()))
        system_prompt = room.system_prompt if room else None
        serving = self._serving(room, now)
        files = self._attachments_by_message(claimed.attachments)
        conversation = self._conversation(
            system_prompt, claimed.turns, files, serving.context_tokens
        )
        return claim, conversation, room, serving

    async def _claim_batch(
        self, reply_ids: Sequence[int]
    ) -> dict[int, tuple[repo.ClaimedReply, datetime] | None]:
        """The claims that met (GroupCommit): one statement, then one round trip of notices to
        the rooms' owners' caches (the replies are `generating` now)."""
        now = self.clock.now()
        async with self.autocommit_sessionmaker() as session:
            claimed = await self.sql.claim_replies(
                session,
                reply_ids=reply_ids,
                now=now,
                model=self.provider.model,
                context_tokens=self.settings.context_max_tokens,
            )
            await session.commit()
        await self.chatrooms.rooms_changed(
            {c.room.user_id for c in claimed.values() if c.room is not None}
        )
        taken: dict[int, tuple[repo.ClaimedReply, datetime] | None] = {
            reply_id: (found, now) for reply_id, found in claimed.items()
        }
        return taken

    async def _finish_batch(self, finishes: Sequence[dict[str, Any]]) -> dict[tuple[int, int], Any]:
        """The one-statement finishes that met (GroupCommit)."""
        async with self.autocommit_sessionmaker() as session:
            rows = await self.sql.finish_replies(session, finishes, self.clock.now())
            await session.commit()
        return rows

    def _serving(self, room: ReplyRoom | None, now: datetime) -> Serving:
        """The room's model and options as its owner's plan allows them now."""
        if room is None:
            return Serving(self.provider, GenerationOptions())
        tier = tier_for(room.plan, now, self.settings.past_due_grace_days)
        options = RoomOptions(
            room.model, room.temperature, thinking_value(room.thinking), room.grounding
        )
        info, generation = reply_settings(self.models.catalogue, tier, options)
        provider = None
        if info.id != self.models.catalogue.default:
            provider = self.models.provider(info.id)
        # The default model's provider is the generator's own (tests replace it there).
        return Serving(provider or self.provider, generation, info.context_tokens)

    def _attachments_by_message(
        self, rows: Sequence[dict[str, Any]]
    ) -> dict[int, tuple[ProviderAttachment, ...]]:
        """The claim's attachment rows as a provider receives them (bytes read on demand)."""
        found: dict[int, list[ProviderAttachment]] = {}
        for row in rows:
            attachment = self.attachments.provider_attachment(SimpleNamespace(**row))
            found.setdefault(row["message_id"], []).append(attachment)
        return {message_id: tuple(items) for message_id, items in found.items()}

    def _conversation(
        self,
        system_prompt: str | None,
        branch: Sequence[tuple[int, str, str]],
        files: dict[int, tuple[ProviderAttachment, ...]] | None = None,
        context_tokens: int | None = None,
    ) -> Conversation:
        """`branch`: (id, role, content) of the completed messages from the one answered up to
        the root, newest first; `files`: their attachments (they count against the budget);
        kept within CONTEXT_MAX_TOKENS and the model's window."""
        limit = self.settings.context_max_tokens
        if context_tokens is not None:
            limit = min(limit, context_tokens)
        budget = limit - estimate_tokens(system_prompt or "")
        turns: list[Turn] = []
        for message_id, role, content in branch:  # keep the newest within the budget
            attached = (files or {}).get(message_id, ())
            cost = estimate_tokens(content) + sum(
                attachment_tokens(a.media_type, a.size) for a in attached
            )
            if turns and cost > budget:
                break
            budget -= cost
            speaker: Literal["user", "assistant"] = "user" if role == "user" else "assistant"
            turns.append(Turn(speaker, content, message_id, attached))
        turns.reverse()
        # The conversation must end with the user's message being answered.
        while turns and turns[-1].role != "user":
            turns.pop()
        return Conversation(system_prompt, turns)

    async def _generate(
        self, claim: Claim, conversation: Conversation, serving: Serving
    ) -> Outcome:
        provider = serving.provider.name
        started = time.perf_counter()
        deltas = _DeltaWriter(self.streams, claim.reply_id)
        try:
            return await self._generate_attempts(claim, conversation, serving, started, deltas)
        finally:
            PROVIDER_LATENCY.labels(provider).observe(time.perf_counter() - started)
            await deltas.flush()  # every delta is in the stream before the final event

    async def _generate_attempts(
        self,
        claim: Claim,
        conversation: Conversation,
        serving: Serving,
        started: float,
        deltas: _DeltaWriter,
    ) -> Outcome:
        progress = _Progress(started, deltas, time.monotonic() + self._heartbeat_interval())
        attempt = 0
        while True:
            attempt += 1
            PROVIDER_ATTEMPTS.labels(serving.provider.name).inc()
            try:
                return await self._attempt(claim, conversation, serving, progress)
            except TimeoutError:
                error = ProviderError("provider_timeout", "timed out", retryable=True)
            except ProviderError as exc:
                error = exc
            # Retried only before the first chunk: a client may already show the partial text.
            if progress.produced or not error.retryable or attempt >= self.settings.ai_max_attempts:
                return progress.outcome(ReplyStatus.FAILED, error.code)
            delay = error.retry_after or min(
                30.0, self.settings.ai_retry_delay_seconds * 2 ** (attempt - 1)
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter

    async def _attempt(
        self, claim: Claim, conversation: Conversation, serving: Serving, progress: _Progress
    ) -> Outcome:
        """One call of the provider, streamed into the reply until it finishes, is cancelled,
        or goes quiet for AI_TIMEOUT_SECONDS (TimeoutError)."""
        timeout = self.settings.ai_timeout_seconds
        provider = serving.provider
        async with (
            asyncio.timeout(timeout) as scope,
            # Closed at once when we stop early (cancel), releasing the provider's
            # connection, rather than whenever the generator is collected.
            contextlib.aclosing(provider.stream(conversation, serving.options)) as items,
        ):
            async for item in items:
                scope.reschedule(asyncio.get_running_loop().time() + timeout)
                if isinstance(item, Finished):
                    return progress.finished(item)
                _take(progress, item, provider.name)
                stopped = await self._between_chunks(claim, progress)
                if stopped is not None:
                    return stopped
        return progress.outcome(ReplyStatus.FAILED, "provider_incomplete")

    async def _between_chunks(self, claim: Claim, progress: _Progress) -> Outcome | None:
        """The reply's upkeep while it streams: a look for a cancel request every
        CANCEL_POLL_SECONDS (the cancelled outcome), a heartbeat every third of
        REPLY_STALE_SECONDS."""
        now = time.monotonic()
        if now - progress.cancel_checked_at >= self.cancel_poll_seconds:
            progress.cancel_checked_at = now
            if await self.cache.get(cancel_key(claim.reply_id)):
                return progress.outcome(ReplyStatus.CANCELLED, "cancelled")
        if now >= progress.heartbeat_at:
            progress.heartbeat_at = now + self._heartbeat_interval()
            await self._heartbeat(claim)
        return None

    def _heartbeat_interval(self) -> float:
        return max(1.0, self.settings.reply_stale_seconds / 3)

    async def _heartbeat(self, claim: Claim) -> None:
        now = self.clock.now()
        async with self.autocommit_sessionmaker() as session:
            await repo.heartbeat_reply(
                session, reply_id=claim.reply_id, attempt=claim.attempt, now=now
            )
            await session.commit()

    async def _finish(
        self,
        claim: Claim,
        outcome: Outcome,
        model: str,
        final_commands: FinalCommands | None = None,
    ) -> None:
        usage = outcome.usage or Usage()
        # A failed or blocked reply gives its quota slot back in the same transaction, and with
        # a token budget every reply settles its reservation in it; any other finish is one
        # statement, written with the other replies' that meet it.
        refund = outcome.status in {ReplyStatus.FAILED, ReplyStatus.BLOCKED}
        together = refund or self.quota.tokens_tracked
        params = {
            "reply_id": claim.reply_id,
            "attempt": claim.attempt,
            "new_status": outcome.status,
            "text": outcome.text,
            "error_code": outcome.error,
            "reason": outcome.finish_reason,
            "prompt": usage.prompt_tokens,
            "output": usage.output_tokens,
            "thinking": usage.thinking_tokens,
            "model": model,
            "cached": usage.cached_tokens,
            "parts": outcome.parts(),
        }
        if together:
            reply = await self._finish_together(claim, params, refund, usage.total)
        else:
            reply = await self.finishes.submit((claim.reply_id, claim.attempt), params)
        if reply is None:
            # Another attempt took over (this one was swept as stale): it owns the outcome.
            log.warning("reply_finish_superseded", reply_id=claim.reply_id)
            return
        siblings = repo.parse_sibling_list(reply.sibling_list, reply.id)
        final = MessageOut.from_row(reply, siblings).model_dump_json()
        # Before the final event, in its round trip: a client that saw `done` and reads the room
        # sees it finished.
        notice = None
        if claim.user_id is not None:
            notice = self.chatrooms.room_changed_notice(claim.user_id)
        event = "done" if outcome.status == ReplyStatus.COMPLETED else "error"
        await self.streams.append(
            claim.reply_id,
            event,
            final,
            expire_seconds=self.settings.reply_stream_ttl_seconds,
            notices=(notice,) if notice is not None else (),
            also=final_commands,
        )
        REPLIES.labels(outcome.status, outcome.error or "").inc()
        log.info("reply_finished", status=outcome.status, error=outcome.error)

    async def _finish_together(
        self, claim: Claim, params: dict[str, Any], refund: bool, tokens: int
    ) -> Any:
        """The finish in one transaction with the quota slot's refund and the token budget's
        settlement: the reply's row, or None (taken over)."""
        async with self.sessionmaker() as session:
            reply = await repo.finish_reply(session, {**params, "now": self.clock.now()})
            if reply is None:
                return None
            # (A reply exists only while its room does: the claim read the room's owner.)
            if refund and reply.quota_day is not None and claim.user_id is not None:
                await self.quota.release_daily_slot(session, claim.user_id, reply.quota_day)
            await self.quota.settle_tokens(session, claim.reply_id, tokens)
            await session.commit()
            return reply

    # --- stuck replies (the sweeper loop is worker/runtime.py's) ----------------------------
    async def sweep(
        self,
        enqueue: Callable[[int], Awaitable[None]],
        *,
        stale_seconds: float | None = None,
        queued_before: datetime | None = None,
    ) -> list[int]:
        """Re-enqueue replies stuck in `queued` or `generating` past REPLY_STALE_SECONDS; a
        queued one only if also last queued before `queued_before` (when given: the jobs
        queued after it are still waiting in the queue)."""
        now = self.clock.now()
        if stale_seconds is None:
            stale_seconds = self.settings.reply_stale_seconds
        cutoff = now - timedelta(seconds=stale_seconds)
        async with self.sessionmaker() as session, session.begin():
            stale, owners = await repo.requeue_stuck_replies(
                session, now=now, cutoff=cutoff, queued_before=queued_before
            )
        for user_id in owners:
            await self.chatrooms.room_changed(user_id)
        for reply_id, _ in stale:
            log.warning("reply_swept", reply_id=reply_id)
            await enqueue(reply_id)
        return [reply_id for reply_id, _ in stale]
