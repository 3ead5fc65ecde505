"""The provider interface: `stream(conversation, options)` yields text deltas (and, where the
model gives them, thought summaries and citations), then one `Finished`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a user message, as a provider receives it: `read()` gives its bytes
    (from the service's storage), `id` names it for a provider's own cache of uploads."""

    id: int
    filename: str
    media_type: str
    size: int
    sha256: str
    read: Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str
    message_id: int | None = None  # the stored message it is (the demo model names them)
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """A room's options for its replies (validated against the model before they get here).
    `thinking`: "off", "low", "medium", "high", a token budget, or None (the model's default)."""

    temperature: float | None = None
    thinking: str | int | None = None
    grounding: bool = False


@dataclass(frozen=True, slots=True)
class Conversation:
    system_prompt: str | None
    turns: list[Turn]  # oldest first; the last one is the user's message to answer

    @property
    def prompt(self) -> str:
        return self.turns[-1].text if self.turns else ""


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Thought:
    """A piece of the model's thought summary: shown apart, never part of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Citations:
    """Where a grounded reply's statements come from: `sources` [{"title", "uri"}],
    `segments` [{"start", "end", "source_indexes"}] (offsets in the reply's text), and the
    search entry point (HTML) Google's terms require to be shown with them."""

    sources: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    search_entry_point: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None
    cached_tokens: int | None = None

    @property
    def total(self) -> int:
        """What a reply costs against a token budget: prompt, output and thinking tokens (the
        cached ones are part of the prompt); those not reported count as 0."""
        return (self.prompt_tokens or 0) + (self.output_tokens or 0) + (self.thinking_tokens or 0)


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    blocked: bool = False  # a safety block: the reply ends `blocked`


class ProviderError(Exception):
    """A provider call that failed; `retryable` errors are retried before the first chunk."""

    def __init__(
        self, code: str, message: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


# What a provider's stream yields: text, thought summaries, citations, then one `Finished`.
StreamItem = Delta | Thought | Citations | Finished


class Provider(Protocol):
    name: str
    model: str

    def stream(
        self, conversation: Conversation, options: GenerationOptions
    ) -> AsyncGenerator[StreamItem, None]:
        """Text deltas (and thoughts, citations where the model gives them), then exactly one
        `Finished`; raises `ProviderError`."""
        ...

    async def title(self, first_message: str) -> str:
        """A short chatroom title (a few words) for a conversation that starts with this."""
        ...


def estimate_tokens(text: str) -> int:
    """A cheap estimate (about four characters a token) for budgets and the demo model."""
    return max(1, (len(text) + 3) // 4)
