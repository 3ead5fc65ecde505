"""What the chat domain needs of a job queue: a reply id in, produced later by some worker.
worker/runtime.py's ReplyPipeline is the implementation; the chat domain never imports it."""

from __future__ import annotations

from typing import Protocol


class ReplyQueue(Protocol):
    async def enqueue(self, reply_id: int) -> None: ...
