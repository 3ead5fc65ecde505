"""The provider interface: `stream(conversation)` yields text deltas, then one `Finished`."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str
    message_id: int | None = None  # the stored message it is (the demo model names them)


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
class Usage:
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None


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


class Provider(Protocol):
    name: str
    model: str

    def stream(self, conversation: Conversation) -> AsyncGenerator[Delta | Finished, None]:
        """Text deltas, then exactly one `Finished`; raises `ProviderError`."""
        ...

    async def title(self, first_message: str) -> str:
        """A short chatroom title (a few words) for a conversation that starts with this."""
        ...


def estimate_tokens(text: str) -> int:
    """A cheap estimate (about four characters a token) for budgets and the demo model."""
    return max(1, (len(text) + 3) // 4)
