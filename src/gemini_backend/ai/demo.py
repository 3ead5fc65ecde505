"""The offline `demo` model: deterministic, streamed in chunks, and it says how much of the
conversation it was given, so the plumbing can be observed without any provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from gemini_backend.ai.base import (
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    StreamItem,
    Thought,
    Usage,
    estimate_tokens,
)

PROMPT_PREVIEW_CHARS = 80


class DemoProvider:
    name = "demo"

    def __init__(self, chunk_delay_ms: int, model: str = "demo") -> None:
        self.chunk_delay = chunk_delay_ms / 1000
        self.model = model

    @staticmethod
    def reply_text(conversation: Conversation) -> str:
        """Names the earlier messages it was given by id: what each reply saw is observable."""
        earlier = conversation.turns[:-1]
        noun = "message" if len(earlier) == 1 else "messages"
        ids = ", ".join(str(turn.message_id) for turn in earlier)
        preview = conversation.prompt[:PROMPT_PREVIEW_CHARS]
        return f'Demo reply (context: {len(earlier)} earlier {noun} [{ids}]) to: "{preview}"'

    @staticmethod
    def thought_text(conversation: Conversation) -> str:
        return f'Thinking about: "{conversation.prompt[:PROMPT_PREVIEW_CHARS]}"'

    @staticmethod
    async def received(conversation: Conversation) -> str:
        """` [attachments: photo.png image/png 48213 B, ...]`: each file of the conversation,
        its size the bytes actually read from the storage ("" without files)."""
        listed = []
        for turn in conversation.turns:
            for attachment in turn.attachments:
                size = len(await attachment.read())
                listed.append(f"{attachment.filename} {attachment.media_type} {size} B")
        return f" [attachments: {', '.join(listed)}]" if listed else ""

    async def stream(
        self, conversation: Conversation, options: GenerationOptions
    ) -> AsyncGenerator[StreamItem, None]:
        thinking = options.thinking is not None and options.thinking != "off"
        if thinking:
            # A thought first, as a thinking model gives its summary before the answer.
            yield Thought(self.thought_text(conversation))
        text = self.reply_text(conversation) + await self.received(conversation)
        words = text.split(" ")
        size = max(1, len(words) // 4)
        chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
        for index, chunk in enumerate(chunks):
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield Delta(chunk if index == 0 else " " + chunk)
        prompt_tokens = sum(estimate_tokens(t.text) for t in conversation.turns)
        if conversation.system_prompt:
            prompt_tokens += estimate_tokens(conversation.system_prompt)
        yield Finished(
            "stop",
            Usage(
                prompt_tokens=prompt_tokens,
                output_tokens=estimate_tokens(text),
                thinking_tokens=estimate_tokens(self.thought_text(conversation)) if thinking else 0,
                cached_tokens=0,
            ),
        )

    async def title(self, first_message: str) -> str:
        words = first_message.split()
        return " ".join(words[:6])[:60].strip() or "New chat"
