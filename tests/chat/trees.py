"""Client steps and checks shared by the conversation tree tests (docs: issue 18's contract)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from gemini_backend.ai.base import Finished, ProviderError
from tests.helpers import read_sse

# What the provider does with a prompt that starts with one of these (ScriptedPrompts): fail
# at once (a non-retryable provider error: `failed`), block it for safety (`blocked`), or
# wait for the test to open the gate before answering (the reply stays in progress).
FAIL = "fail"
BLOCK = "block"
HOLD = "hold"


def demo_text(prompt: str, earlier: list[int]) -> str:
    """The demo model's reply to `prompt` given the messages `earlier` (ids, oldest first)."""
    noun = "message" if len(earlier) == 1 else "messages"
    return f'Demo reply (context: {len(earlier)} earlier {noun} {earlier}) to: "{prompt[:80]}"'


def expected_status(prompt: str) -> str:
    """The final status of a reply to `prompt` under ScriptedPrompts."""
    if prompt.startswith(FAIL):
        return "failed"
    return "blocked" if prompt.startswith(BLOCK) else "completed"


def text_parts(content: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": content}] if content else []


def generators(app: Any) -> list[Any]:
    """The reply generators of every process of the test (the API's, and the worker's)."""
    found = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        found.append(app.state.worker.pipeline.generator)
    return found


@dataclass
class Script:
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)  # a held reply started
    released: asyncio.Event = field(default_factory=asyncio.Event)  # and its stream closed


class ScriptedPrompts:
    """The provider it wraps (the demo model), but for prompts starting FAIL, BLOCK or HOLD."""

    def __init__(self, inner: Any, script: Script) -> None:
        self.inner = inner
        self.script = script
        self.name = inner.name
        self.model = inner.model

    async def stream(self, conversation: Any, *options: Any) -> Any:
        prompt = conversation.prompt
        if prompt.startswith(FAIL):
            raise ProviderError("provider_bad_request", "refused by the test", retryable=False)
        if prompt.startswith(BLOCK):
            yield Finished("safety", blocked=True)
            return
        if not prompt.startswith(HOLD):
            async for event in self.inner.stream(conversation, *options):
                yield event
            return
        self.script.holding.set()
        try:
            await self.script.gate.wait()
            async for event in self.inner.stream(conversation, *options):
                yield event
        finally:
            self.script.released.set()

    async def title(self, first_message: str) -> str:
        return str(await self.inner.title(first_message))


def script_prompts(app: Any) -> Script:
    """Every process's generator answers through ScriptedPrompts, with one gate for all."""
    script = Script()
    for generator in generators(app):
        generator.provider = ScriptedPrompts(generator.provider, script)
    return script


@dataclass
class Chat:
    """One signed-in user's calls on the tree routes."""

    client: httpx.AsyncClient
    auth: dict[str, str]

    async def room(self, name: str = "tree", **fields: Any) -> int:
        response = await self.client.post(
            "/chatroom", json={"name": name, **fields}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    async def send(self, room: int, content: str, parent_id: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {"content": content}
        if parent_id is not None:
            body["parent_id"] = parent_id
        return await self.client.post(f"/chatroom/{room}/message", json=body, headers=self.auth)

    async def edit(self, room: int, message_id: int, content: str) -> httpx.Response:
        return await self.client.post(
            f"/chatroom/{room}/messages/{message_id}/edit",
            json={"content": content},
            headers=self.auth,
        )

    async def retry(self, room: int, message_id: int) -> httpx.Response:
        return await self.client.post(
            f"/chatroom/{room}/messages/{message_id}/retry", headers=self.auth
        )

    async def activate(self, room: int, leaf_id: int) -> httpx.Response:
        return await self.client.put(
            f"/chatroom/{room}/active", json={"leaf_id": leaf_id}, headers=self.auth
        )

    async def fork(self, room: int, message_id: int) -> httpx.Response:
        return await self.client.post(
            f"/chatroom/{room}/fork", json={"message_id": message_id}, headers=self.auth
        )

    async def accepted(self, response: httpx.Response) -> dict[str, Any]:
        """The receipt of a 202, once its reply has finished; the final reply is `final`."""
        assert response.status_code == 202, response.text
        receipt: dict[str, Any] = response.json()
        receipt["final"] = await self.finish(receipt)
        return receipt

    async def finish(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """The reply of a receipt once it has finished (its stream's last event)."""
        events = await read_sse(self.client, receipt["stream_url"], self.auth)
        assert events[-1][1] in {"done", "error"}, events
        final: dict[str, Any] = json.loads(events[-1][2])
        return final

    async def exchange(
        self, room: int, content: str, parent_id: int | None = None
    ) -> dict[str, Any]:
        return await self.accepted(await self.send(room, content, parent_id))

    async def tree(self, room: int) -> dict[str, Any]:
        response = await self.client.get(f"/chatroom/{room}/tree", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def detail(self, room: int) -> dict[str, Any]:
        response = await self.client.get(f"/chatroom/{room}", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def history(self, room: int, limit: int) -> list[dict[str, Any]]:
        """The whole active branch through `GET /messages`, page after page (oldest first)."""
        pages: list[list[dict[str, Any]]] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            response = await self.client.get(
                f"/chatroom/{room}/messages", params=params, headers=self.auth
            )
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["messages"]) <= limit
            pages.append(page["messages"])
            if page["next_cursor"] is None:
                break
            params["before"] = page["next_cursor"]
        return [message for page in reversed(pages) for message in page]

    async def used_today(self) -> int:
        response = await self.client.get("/chatroom/usage", headers=self.auth)
        assert response.status_code == 200, response.text
        return int(response.json()["used_today"])


def path_to(messages: dict[int, dict[str, Any]], leaf: int | None) -> list[int]:
    """The ids from the root to `leaf` along `parent_id` (messages by id)."""
    path: list[int] = []
    while leaf is not None:
        path.append(leaf)
        leaf = messages[leaf]["parent_id"]
    return path[::-1]


def context_of(messages: dict[int, dict[str, Any]], user_message: int) -> list[int]:
    """What the model is given before `user_message`: its user and completed ancestors."""
    ancestors = path_to(messages, user_message)[:-1]
    return [
        i
        for i in ancestors
        if messages[i]["role"] == "user" or messages[i]["status"] == "completed"
    ]
