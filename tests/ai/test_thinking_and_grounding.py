"""Thinking and grounding with Gemini: the real `google-genai` SDK against the fake Gemini API
(tests/ai/fake_gemini.py). First the provider on its own (what a room's options send, what the
thought parts and the grounding metadata become), then end to end through the app: thoughts and
citations streamed as their own events, stored as the reply's parts, resumed with
Last-Event-ID, and replayed from the database after the stream expired."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from gemini_backend.ai.base import (
    Citations,
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    Provider,
    StreamItem,
    Thought,
    Turn,
    Usage,
)
from gemini_backend.ai.gemini import GeminiProvider
from gemini_backend.ai.openai_compat import OpenAIProvider
from tests.ai import fake_openai
from tests.ai.fake_gemini import API_KEY, FakeGemini, Reply, search_grounding
from tests.helpers import bearer, drop_reply_stream, read_sse, sign_in

MODEL = "gemini-2.5-flash"
CONVERSATION = Conversation(None, [Turn("user", "Is May a good time for Lisbon?")])
# Non-ASCII before the grounded statement: Gemini's offsets are UTF-8 bytes, ours characters.
ANSWER = ("Sí, ", "May is mild: ", "about 22 °C.")
STATEMENT = "about 22 °C."


@pytest.fixture
def fake(gemini_server: FakeGemini) -> FakeGemini:
    return gemini_server


@pytest.fixture
def settings_overrides(fake: FakeGemini) -> dict[str, Any]:
    return {
        "ai_provider": "gemini",
        "gemini_api_key": API_KEY,
        "gemini_model": MODEL,
        "gemini_base_url": fake.url,
        "ai_timeout_seconds": 3,
    }


async def collect(
    fake: FakeGemini, options: GenerationOptions, model: str = MODEL
) -> list[StreamItem]:
    provider = GeminiProvider(api_key=API_KEY, model=model, timeout_seconds=2, base_url=fake.url)
    try:
        return [item async for item in provider.stream(CONVERSATION, options)]
    finally:
        await provider.aclose()


# --- the provider on its own --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "thinking", "expected"),
    [
        (MODEL, None, None),
        (MODEL, "off", {"thinkingBudget": 0, "includeThoughts": False}),
        (MODEL, "low", {"thinkingBudget": 1024, "includeThoughts": True}),
        (MODEL, "medium", {"thinkingBudget": 8192, "includeThoughts": True}),
        ("gemini-2.5-pro", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
        ("gemini-2.5-pro", "off", None),  # Pro cannot stop thinking: the model's default
        (MODEL, 2048, {"thinkingBudget": 2048, "includeThoughts": True}),
        ("gemini-3-pro-preview", "high", {"thinkingLevel": "HIGH", "includeThoughts": True}),
        ("gemini-3-flash-preview", "low", {"thinkingLevel": "LOW", "includeThoughts": True}),
        ("gemini-3-pro-preview", "off", {"thinkingLevel": "LOW", "includeThoughts": False}),
    ],
)
async def test_the_thinking_option_is_sent_as_gemini_s_thinking_config(
    fake, model, thinking, expected
):
    await collect(fake, GenerationOptions(thinking=thinking), model)
    [sent] = fake.streams
    assert sent.model == model
    assert sent.generation_config.get("thinkingConfig") == expected
    assert sent.tools == []


async def test_thought_parts_become_thoughts_never_text(fake):
    fake.script(
        Reply(
            thoughts=("Weighing the weather", " and the crowds."),
            chunks=("Yes,", " it is."),
            thoughts_tokens=40,
            cached_tokens=6,
        )
    )
    items = await collect(fake, GenerationOptions(thinking="high"))
    assert items[:-1] == [
        Thought("Weighing the weather"),
        Thought(" and the crowds."),
        Delta("Yes,"),
        Delta(" it is."),
    ]
    assert items[-1] == Finished(
        "stop", Usage(prompt_tokens=12, output_tokens=7, thinking_tokens=40, cached_tokens=6)
    )


async def test_grounding_sends_the_search_tool_and_yields_citations_last(fake):
    text = "".join(ANSWER)
    fake.script(Reply(chunks=ANSWER, grounding=search_grounding(text, STATEMENT)))
    items = await collect(fake, GenerationOptions(grounding=True))
    [sent] = fake.streams
    assert sent.tools == [{"googleSearch": {}}]
    assert "thinkingConfig" not in sent.generation_config
    assert isinstance(items[-1], Finished)
    citations = items[-2]
    start = text.index(STATEMENT)
    assert citations == Citations(
        sources=[
            {"title": "ipma.pt", "uri": "https://vertexaisearch.example/1"},
            {"title": "visitlisboa.com", "uri": "https://vertexaisearch.example/2"},
        ],
        segments=[
            {
                "start": start,
                "end": start + len(STATEMENT),
                "text": STATEMENT,
                "source_indexes": [0, 1],
            }
        ],
        search_entry_point='<div class="container">Lisbon weather</div>',
    )
    assert text[start : start + len(STATEMENT)] == STATEMENT
    assert [item for item in items if isinstance(item, Delta)] == [Delta(t) for t in ANSWER]


async def test_no_grounding_metadata_means_no_citations(fake):
    items = await collect(fake, GenerationOptions(grounding=True))
    assert not any(isinstance(item, Citations) for item in items)


# --- an OpenAI-compatible server -----------------------------------------------------------------
@pytest.fixture
def openai_fake(openai_server: fake_openai.FakeOpenAI) -> fake_openai.FakeOpenAI:
    return openai_server


async def collect_openai(
    fake: fake_openai.FakeOpenAI, options: GenerationOptions
) -> list[StreamItem]:
    provider = OpenAIProvider(
        base_url=fake.url + "/v1", api_key="k", model="deepseek-reasoner", timeout_seconds=2
    )
    try:
        return [item async for item in provider.stream(CONVERSATION, options)]
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        (None, None),
        ("off", None),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        (512, None),
    ],
)
async def test_a_thinking_level_is_sent_as_reasoning_effort(openai_fake, thinking, effort):
    await collect_openai(openai_fake, GenerationOptions(thinking=thinking))
    [sent] = openai_fake.requests
    assert sent.body.get("reasoning_effort") == effort


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_streamed_reasoning_becomes_thoughts_and_cached_tokens_are_read(openai_fake, field):
    openai_fake.script(
        fake_openai.Reply(
            reasoning=("Paris is", " the capital."),
            reasoning_field=field,
            chunks=("Paris.",),
            reasoning_tokens=9,
            cached_tokens=4,
        )
    )
    items = await collect_openai(openai_fake, GenerationOptions(thinking="high"))
    assert items == [
        Thought("Paris is"),
        Thought(" the capital."),
        Delta("Paris."),
        Finished("stop", Usage(11, 7, 9, cached_tokens=4)),
    ]


async def test_reasoning_is_not_shown_when_thinking_is_off(openai_fake):
    openai_fake.script(fake_openai.Reply(reasoning=("hidden",), chunks=("Paris.",)))
    items = await collect_openai(openai_fake, GenerationOptions(thinking="off"))
    assert [item for item in items if not isinstance(item, Finished)] == [Delta("Paris.")]


# --- end to end through the app -----------------------------------------------------------------
class WithOptions:
    """The app's provider, given fixed options: a room's options reach the provider this way
    until rooms carry them."""

    def __init__(self, inner: Provider, options: GenerationOptions) -> None:
        self.inner = inner
        self.options = options
        self.name = inner.name
        self.model = inner.model

    def stream(
        self, conversation: Conversation, options: GenerationOptions
    ) -> AsyncGenerator[StreamItem, None]:
        return self.inner.stream(conversation, self.options)

    async def title(self, first_message: str) -> str:
        return await self.inner.title(first_message)


def use_options(app: Any, options: GenerationOptions) -> None:
    generators = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        generators.append(app.state.worker.pipeline.generator)
    for generator in generators:
        generator.provider = WithOptions(generator.provider, options)


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice) -> int:
    response = await client.post("/chatroom", json={"name": "Lisbon"}, headers=alice)
    assert response.status_code == 201, response.text
    room_id: int = response.json()["id"]
    return room_id


async def send(client, auth, room_id) -> dict[str, Any]:
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": "Is May good?"}, headers=auth
    )
    assert response.status_code == 202, response.text
    receipt: dict[str, Any] = response.json()
    return receipt


def of_kind(events, kind) -> list[Any]:
    return [json.loads(data) for _id, event, data in events if event == kind]


async def test_thoughts_and_citations_stream_store_resume_and_replay(
    client, app, fake, alice, room
):
    text = "".join(ANSWER)
    grounding = search_grounding(text, STATEMENT)
    fake.script(
        Reply(
            thoughts=("Checking the climate.", " Then the crowds."),
            chunks=ANSWER,
            grounding=grounding,
            thoughts_tokens=33,
            cached_tokens=5,
        )
    )
    use_options(app, GenerationOptions(thinking="high", grounding=True))
    receipt = await send(client, alice, room)
    events = await read_sse(client, receipt["stream_url"], alice)
    kinds = [event for _id, event, _data in events]
    # Thoughts first, apart from the text; the citations after the text; then done.
    assert kinds[0] == "thought"
    assert kinds[-2:] == ["citations", "done"]
    assert set(kinds[kinds.index("delta") : -2]) == {"delta"}
    assert "".join(t["text"] for t in of_kind(events, "thought")) == (
        "Checking the climate. Then the crowds."
    )
    assert "".join(t["text"] for t in of_kind(events, "delta")) == text
    [streamed] = of_kind(events, "citations")
    assert set(streamed) == {"sources", "segments", "search_entry_point"}
    assert streamed["sources"][1] == {
        "title": "visitlisboa.com",
        "uri": grounding["groundingChunks"][1]["web"]["uri"],
    }
    start = text.index(STATEMENT)
    assert streamed["segments"] == [
        {"start": start, "end": start + len(STATEMENT), "text": STATEMENT, "source_indexes": [0, 1]}
    ]

    final = json.loads(events[-1][2])
    assert final["content"] == text  # never the thoughts
    assert final["usage"]["thinking_tokens"] == 33
    assert final["parts"] == [
        {"type": "thought", "text": "Checking the climate. Then the crowds."},
        {"type": "text", "text": text},
        {"type": "citation", **streamed},
    ]
    shown = await client.get(f"/chatroom/{room}/messages/{receipt['reply_id']}", headers=alice)
    assert shown.status_code == 200, shown.text
    assert shown.json()["parts"] == final["parts"]

    # Resumed after the thought: everything after it, nothing before.
    first_thought_id = events[0][0]
    resumed = await read_sse(client, receipt["stream_url"], alice, first_thought_id)
    assert resumed == events[1:]

    # The stream expired: replayed from the database, thoughts and citations included.
    await drop_reply_stream(app, receipt["reply_id"])
    replayed = await read_sse(client, receipt["stream_url"], alice)
    assert [(i, e) for i, e, _d in replayed] == [
        ("db-1", "thought"),
        ("db-2", "delta"),
        ("db-3", "citations"),
        ("db-4", "done"),
    ]
    assert of_kind(replayed, "thought") == [{"text": "Checking the climate. Then the crowds."}]
    assert of_kind(replayed, "delta") == [{"text": text}]
    assert of_kind(replayed, "citations") == [streamed]
    assert json.loads(replayed[-1][2])["parts"] == final["parts"]


async def test_a_reply_without_thoughts_or_citations_is_its_text_alone(
    client, app, fake, alice, room
):
    use_options(app, GenerationOptions(thinking="off"))
    receipt = await send(client, alice, room)
    events = await read_sse(client, receipt["stream_url"], alice)
    assert {event for _id, event, _data in events} == {"delta", "done"}
    final = json.loads(events[-1][2])
    assert final["parts"] == [{"type": "text", "text": "Hello from Gemini."}]
    [sent] = fake.streams
    assert sent.generation_config["thinkingConfig"] == {
        "thinkingBudget": 0,
        "includeThoughts": False,
    }


async def test_a_failure_after_thoughts_keeps_them_and_is_not_retried(
    client, app, fake, alice, room
):
    fake.script(Reply(thoughts=("Hmm.",), chunks=(), finish_reason=None, break_after=True))
    use_options(app, GenerationOptions(thinking="low"))
    receipt = await send(client, alice, room)
    events = await read_sse(client, receipt["stream_url"], alice)
    final = json.loads(events[-1][2])
    assert events[-1][1] == "error"
    assert final["status"] == "failed"
    assert final["content"] == ""
    assert final["parts"] == [{"type": "thought", "text": "Hmm."}]
    assert len(fake.streams) == 1  # the client saw the thought: no retry from scratch
