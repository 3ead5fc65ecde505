"""Reading conversations in: our own export (a room's JSON, or the account's NDJSON) and
ChatGPT's `conversations.json`. Everything is validated and turned into plans (rooms with
their messages in insertion order) before anything is written, so a malformed or hostile file
is a 422 that creates nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gemini_backend.chat.schemas import Thinking
from gemini_backend.core.db import MAX_ID, STORABLE_TEXT
from gemini_backend.core.errors import PayloadTooLarge, ValidationFailed

OWN_FORMAT = "gemini-backend/chatroom"
# A branch deeper than this is refused: each level is one INSERT, and no real conversation
# goes this deep.
MAX_DEPTH = 2000
MAX_TEXT = 200_000  # characters of one imported message
FINAL = ("completed", "failed", "blocked", "cancelled")

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT, pattern=STORABLE_TEXT)]
Short = Annotated[str, StringConstraints(max_length=100, pattern=STORABLE_TEXT)]


class ImportInvalid(ValidationFailed):
    code = "invalid_import"
    detail = "The file is not an export of this service or ChatGPT's conversations.json."


class ImportTooLarge(PayloadTooLarge):
    code = "import_too_large"
    detail = "The import is larger than IMPORT_MAX_BYTES or holds more than IMPORT_MAX_MESSAGES."


# --- our own export ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


class OwnMessage(_Strict):
    id: Annotated[int, Field(ge=1, le=MAX_ID)]
    parent_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    role: Literal["user", "assistant"]
    content: Text = ""
    parts: Annotated[list[dict[str, Any]], Field(max_length=100)] | None = None
    status: Literal["queued", "generating", *FINAL] = "completed"  # type: ignore[valid-type]
    error: Short | None = None
    finish_reason: Short | None = None
    model: Short | None = None
    created_at: datetime | None = None


class OwnRoom(_Strict):
    name: Annotated[str, StringConstraints(max_length=200, pattern=STORABLE_TEXT)] | None = None
    system_prompt: Text | None = None
    model: Short | None = None
    temperature: float | None = None
    thinking: Thinking | None = None
    grounding: bool = False
    active_leaf_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None


class OwnDocument(_Strict):
    format: Literal["gemini-backend/chatroom"]
    version: Literal[1]
    chatroom: OwnRoom
    messages: list[OwnMessage]


# --- ChatGPT's conversations.json -------------------------------------------------------------


class GptAuthor(_Strict):
    role: Annotated[str, StringConstraints(max_length=32)]


class GptContent(_Strict):
    content_type: Annotated[str, StringConstraints(max_length=64)] = "text"
    parts: Annotated[list[Any], Field(max_length=1000)] | None = None


class GptMessage(_Strict):
    author: GptAuthor
    content: GptContent | None = None
    create_time: float | None = None


class GptNode(_Strict):
    message: GptMessage | None = None
    parent: Annotated[str, StringConstraints(max_length=200)] | None = None
    children: Annotated[list[str], Field(max_length=10_000)] = []


class GptConversation(_Strict):
    title: Annotated[str, StringConstraints(max_length=1000)] | None = None
    mapping: dict[Annotated[str, StringConstraints(max_length=200)], GptNode]
    current_node: Annotated[str, StringConstraints(max_length=200)] | None = None


# --- plans --------------------------------------------------------------------------------------


@dataclass
class NodePlan:
    key: str
    parent: str | None
    role: str
    content: str
    parts: list[dict[str, Any]] | None
    status: str
    error: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    created_at: datetime | None = None


@dataclass
class RoomPlan:
    """One room to create: its fields (as `POST /chatroom` takes them) and its messages,
    every parent before its children, siblings in their original order."""

    room: dict[str, Any]
    nodes: list[NodePlan] = field(default_factory=list)
    active: str | None = None


def _fail(where: str, problem: str) -> ImportInvalid:
    return ImportInvalid(f"{where}: {problem}")


def _ordered(where: str, nodes: list[NodePlan]) -> list[NodePlan]:
    """The nodes with every parent before its children, otherwise in the given order (a child
    given before its parent comes right after it); refuses a parent that is not there, a
    cycle, and a branch deeper than MAX_DEPTH."""
    keys = set()
    for node in nodes:
        if node.key in keys:
            raise _fail(where, f"message {node.key!r} appears twice")
        keys.add(node.key)
    waiting: dict[str, list[NodePlan]] = {}
    depth: dict[str, int] = {}
    ordered: list[NodePlan] = []
    for node in nodes:
        if node.parent is not None and node.parent not in keys:
            raise _fail(where, f"the parent of message {node.key!r} is not in the file")
        if node.parent is not None and node.parent not in depth:
            waiting.setdefault(node.parent, []).append(node)
            continue
        stack = [node]
        while stack:
            ready = stack.pop()
            depth[ready.key] = 1 if ready.parent is None else depth[ready.parent] + 1
            if depth[ready.key] > MAX_DEPTH:
                raise _fail(where, f"a branch is deeper than {MAX_DEPTH} messages")
            ordered.append(ready)
            stack.extend(reversed(waiting.pop(ready.key, [])))
    if len(ordered) != len(nodes):
        raise _fail(where, "the messages' parents form a cycle")
    return ordered


def _own_parts(parts: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Parts as exported; an attachment's file is not imported, so its id goes."""
    if parts is None:
        return None
    return [
        {k: v for k, v in part.items() if k != "attachment_id"}
        if part.get("type") == "attachment"
        else part
        for part in parts
    ]


def _own_plan(where: str, document: OwnDocument) -> RoomPlan:
    room = document.chatroom
    nodes = []
    for m in sorted(document.messages, key=lambda m: m.id):
        status = m.status if m.role == "assistant" else "completed"
        if status not in FINAL:
            status = "cancelled"  # an import never generates a reply
        nodes.append(
            NodePlan(
                key=str(m.id),
                parent=str(m.parent_id) if m.parent_id is not None else None,
                role=m.role,
                content=m.content,
                parts=_own_parts(m.parts),
                status=status,
                error=m.error if status != "completed" else None,
                finish_reason=m.finish_reason,
                model=m.model,
                created_at=m.created_at,
            )
        )
    fields = room.model_dump(exclude={"active_leaf_id"}, exclude_none=True)
    active = str(room.active_leaf_id) if room.active_leaf_id is not None else None
    return RoomPlan(fields, _ordered(where, nodes), active)


def _gpt_text(content: GptContent | None) -> str:
    if content is None or not content.parts:
        return ""
    return "\n".join(part for part in content.parts if isinstance(part, str))


def _gpt_nodes(conversation: GptConversation) -> tuple[list[NodePlan], dict[str, str | None]]:
    """The user and assistant messages with text, each under its nearest kept ancestor; and
    for every node of the mapping, that kept node (for `current_node`)."""
    mapping = conversation.mapping
    position = {key: i for i, key in enumerate(mapping)}
    for node in mapping.values():
        for i, child in enumerate(node.children):
            position.setdefault(child, i)
    kept: dict[str, str | None] = {}
    nodes: list[NodePlan] = []
    order = _ordered(
        "mapping",
        [NodePlan(k, n.parent, "", "", None, "") for k, n in mapping.items()],
    )
    for plain in order:
        node = mapping[plain.key]
        parent_kept = kept.get(node.parent) if node.parent is not None else None
        message = node.message
        text = _gpt_text(message.content if message else None)
        role = message.author.role if message else ""
        if role in ("user", "assistant") and text.strip():
            created = (
                datetime.fromtimestamp(message.create_time, tz=UTC)
                if message
                and message.create_time is not None
                and 0 <= message.create_time < 32503680000
                else None
            )
            nodes.append(
                NodePlan(
                    plain.key,
                    parent_kept,
                    role,
                    text[:MAX_TEXT],
                    None,
                    "completed",
                    created_at=created,
                )
            )
            kept[plain.key] = plain.key
        else:
            kept[plain.key] = parent_kept
    return nodes, kept


def _gpt_plan(where: str, conversation: GptConversation) -> RoomPlan:
    try:
        nodes, kept = _gpt_nodes(conversation)
    except ImportInvalid as exc:
        raise _fail(where, exc.detail) from None
    title = (conversation.title or "").replace("\x00", "").strip()[:200]
    room = {"name": title} if title else {}
    current = conversation.current_node
    active = kept.get(current) if current is not None else None
    return RoomPlan(room, _ordered(where, nodes), active)


def _documents(body: bytes, ndjson: bool) -> list[Any]:
    try:
        if ndjson:
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImportInvalid("The body is not valid JSON.") from exc
    return parsed if isinstance(parsed, list) else [parsed]


def _too_many(count: int, budget: int) -> None:
    if count > budget:
        raise ImportTooLarge("The import holds more messages than IMPORT_MAX_MESSAGES.")


def _plan_one(index: int, item: Any, budget: int) -> RoomPlan:
    where = f"item {index}"
    try:
        if isinstance(item, dict) and item.get("format") == OWN_FORMAT:
            document = OwnDocument.model_validate(item)
            _too_many(len(document.messages), budget)
            return _own_plan(where, document)
        if isinstance(item, dict) and "mapping" in item:
            conversation = GptConversation.model_validate(item)
            _too_many(len(conversation.mapping), budget * 2)  # with its system and tool nodes
            return _gpt_plan(where, conversation)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise _fail(where, f"{path}: {first['msg']}") from None
    raise _fail(where, "neither a chatroom exported here nor a ChatGPT conversation")


def plan_import(body: bytes, *, ndjson: bool, max_messages: int) -> list[RoomPlan]:
    """The rooms a body would create; raises ImportInvalid or ImportTooLarge. CPU only (run it
    in a thread: a large file takes a while to parse)."""
    items = _documents(body, ndjson)
    if not items:
        raise ImportInvalid("The file holds no conversation.")
    plans = []
    total = 0
    for index, item in enumerate(items):
        plan = _plan_one(index, item, max_messages - total)
        total += len(plan.nodes)
        _too_many(total, max_messages)
        plans.append(plan)
    return plans
