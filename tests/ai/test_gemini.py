"""The Gemini provider: the real `google-genai` SDK against a local fake of the Gemini API
(tests/ai/fake_gemini.py), first directly (`provider.stream`, `provider.title`), then end to end
through the app (send a message, read the reply's SSE stream, check the stored outcome and what
the fake server was asked, and how often)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from gemini_backend.ai.base import (
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    ProviderError,
    Turn,
    Usage,
)
from gemini_backend.ai.gemini import SERVER_DEADLINE_SECONDS, GeminiProvider
from gemini_backend.ai.titles import TITLE_INSTRUCTION, TITLE_MAX_TOKENS
from tests.ai.fake_gemini import (
    API_KEY,
    Fail,
    FakeGemini,
    Hang,
    Reply,
    bad_request,
    daily_quota_exhausted,
    internal_error_event,
    invalid_api_key,
    model_not_found,
    permission_denied,
    prompt_blocked,
    rate_limited,
    safety_stop,
    server_error,
)
from tests.helpers import bearer, read_sse, sign_in

MODEL = "gemini-2.5-flash"


@pytest.fixture
def fake(gemini_server: FakeGemini) -> FakeGemini:
    return gemini_server


@pytest.fixture
def settings_overrides(fake: FakeGemini, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The app talks to the fake; a test changes more with indirect parametrization."""
    return {
        "ai_provider": "gemini",
        "gemini_api_key": API_KEY,
        "gemini_model": MODEL,
        "gemini_base_url": fake.url,
        # Generous enough that a loaded CI machine never times out a healthy call, so the
        # request counts are exact; hang tests pay it per attempt.
        "ai_timeout_seconds": 3,
        "ai_max_attempts": 3,
        **getattr(request, "param", {}),
    }


def make_provider(fake: FakeGemini, **overrides: Any) -> GeminiProvider:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "model": MODEL,
        "timeout_seconds": 1,
        "base_url": fake.url,
    }
    values.update(overrides)
    return GeminiProvider(**values)


@pytest.fixture
async def provider(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    made = make_provider(fake)
    try:
        yield made
    finally:
        await made.aclose()


CONVERSATION = Conversation(
    "You are a terse travel guide.",
    [
        Turn("user", "Where should I go in May?"),
        Turn("assistant", "Lisbon."),
        Turn("user", "Why there?"),
    ],
)


async def collect(
    provider: GeminiProvider,
    conversation: Conversation = CONVERSATION,
    options: GenerationOptions = GenerationOptions(),
) -> tuple[list[Delta | Finished], ProviderError | None]:
    items: list[Delta | Finished] = []
    try:
        async for item in provider.stream(conversation, options):
            items.append(item)
    except ProviderError as exc:
        return items, exc
    return items, None


def texts(items: list[Delta | Finished]) -> list[str]:
    return [item.text for item in items if isinstance(item, Delta)]


# --- the provider on its own --------------------------------------------------------------------
async def test_stream_sends_the_conversation_and_yields_text_then_usage(fake, provider):
    fake.script(
        Reply(
            chunks=("Mild weather", ", few crowds", ", long evenings."),
            thoughts=("The user asks about May travel...",),
            prompt_tokens=31,
            output_tokens=9,
            thoughts_tokens=44,
        )
    )
    items, error = await collect(provider)
    assert error is None
    # The thought part is not part of the reply.
    assert texts(items) == ["Mild weather", ", few crowds", ", long evenings."]
    assert items[-1] == Finished(
        "stop", Usage(prompt_tokens=31, output_tokens=9, thinking_tokens=44), blocked=False
    )
    assert sum(isinstance(item, Finished) for item in items) == 1

    [sent] = fake.requests
    assert sent.method == "POST"
    assert sent.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert sent.query == {"alt": "sse"}  # the key travels in a header, never in the URL
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.headers["x-server-timeout"] == str(SERVER_DEADLINE_SECONDS)
    assert sent.system_instruction == "You are a terse travel guide."
    assert sent.turns == [
        ("user", "Where should I go in May?"),
        ("model", "Lisbon."),
        ("user", "Why there?"),
    ]


async def test_no_system_prompt_sends_no_system_instruction(fake, provider):
    items, error = await collect(provider, Conversation(None, [Turn("user", "Hi")]))
    assert error is None
    assert "".join(texts(items)) == "Hello from Gemini."
    [sent] = fake.requests
    assert "systemInstruction" not in sent.body
    assert sent.turns == [("user", "Hi")]


async def test_max_tokens_is_a_finish_reason_not_a_block(fake, provider):
    fake.script(Reply(chunks=("A long", " answer that"), finish_reason="MAX_TOKENS"))
    items, error = await collect(provider)
    assert error is None
    assert texts(items) == ["A long", " answer that"]
    assert isinstance(items[-1], Finished)
    assert items[-1].finish_reason == "max_tokens"
    assert items[-1].blocked is False


@pytest.mark.parametrize(
    "reason", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION"]
)
async def test_a_safety_finish_reason_blocks_the_reply(fake, provider, reason):
    fake.script(Reply(chunks=("It starts",), finish_reason=reason))
    items, error = await collect(provider)
    assert error is None
    assert texts(items) == ["It starts"]
    assert items[-1] == Finished(
        reason.lower(), Usage(prompt_tokens=12, output_tokens=7, thinking_tokens=None), True
    )


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "OTHER"])
async def test_a_blocked_prompt_blocks_the_reply(fake, provider, reason):
    fake.script(prompt_blocked(reason))
    items, error = await collect(provider)
    assert error is None
    assert items == [Finished(reason.lower(), Usage(prompt_tokens=12), blocked=True)]


@pytest.mark.parametrize(
    ("behaviour", "code", "retryable", "retry_after"),
    [
        pytest.param(rate_limited("7s"), "provider_rate_limited", True, 7.0, id="429-retry-info"),
        pytest.param(
            rate_limited("0.250s"), "provider_rate_limited", True, 0.25, id="429-fractional"
        ),
        pytest.param(
            rate_limited(None, **{"Retry-After": "3"}),
            "provider_rate_limited",
            True,
            3.0,
            id="429-retry-after-header",
        ),
        pytest.param(rate_limited(None), "provider_rate_limited", True, None, id="429-no-delay"),
        pytest.param(
            rate_limited("120s"), "provider_rate_limited", False, 120.0, id="429-long-wait"
        ),
        pytest.param(
            daily_quota_exhausted(), "provider_quota_exhausted", False, None, id="429-per-day"
        ),
        pytest.param(server_error(500), "provider_unavailable", True, None, id="500"),
        pytest.param(server_error(503), "provider_unavailable", True, None, id="503"),
        pytest.param(
            Fail(408, "Request timed out.", "DEADLINE_EXCEEDED"),
            "provider_unavailable",
            True,
            None,
            id="408",
        ),
        pytest.param(bad_request(), "provider_bad_request", False, None, id="400"),
        pytest.param(invalid_api_key(), "provider_auth", False, None, id="400-bad-key"),
        pytest.param(
            Fail(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED"),
            "provider_auth",
            False,
            None,
            id="401",
        ),
        pytest.param(permission_denied(), "provider_auth", False, None, id="403"),
        pytest.param(model_not_found(), "provider_not_found", False, None, id="404"),
    ],
)
async def test_errors_become_provider_errors_without_sdk_retries(
    fake, provider, behaviour, code, retryable, retry_after
):
    fake.script(behaviour)
    items, error = await collect(provider)
    assert items == []
    assert error is not None
    assert (error.code, error.retryable, error.retry_after) == (code, retryable, retry_after)
    assert len(fake.requests) == 1  # the SDK did not retry on its own


async def test_a_wrong_key_is_provider_auth_and_never_logged(fake):
    secret = "AIzaSy-this-key-must-stay-secret"
    provider = make_provider(fake, api_key=secret)
    try:
        assert secret not in repr(provider)
        with capture_logs() as logs:
            items, error = await collect(provider)
            title = await provider.title("Plan a weekend in Porto with kids")
    finally:
        await provider.aclose()
    assert items == []
    assert error is not None
    assert error.code == "provider_auth"
    assert secret not in str(error)
    assert title == "Plan a weekend in Porto with"  # the fallback: the first words
    assert fake.requests[0].headers["x-goog-api-key"] == secret
    assert any(entry["event"] == "provider_call_failed" for entry in logs)
    assert secret not in json.dumps(logs, default=str)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(chunks=("Partial ", "answer"), break_after=True), id="dropped"),
        pytest.param(
            Reply(chunks=("Partial ", "answer"), error_event=internal_error_event()),
            id="error-event",
        ),
        pytest.param(Reply(chunks=("Partial ", "answer"), finish_reason=None), id="no-finish"),
    ],
)
async def test_an_error_after_chunks_is_a_stream_error(fake, provider, reply):
    fake.script(reply)
    items, error = await collect(provider)
    assert texts(items) == ["Partial ", "answer"]
    assert not any(isinstance(item, Finished) for item in items)
    assert error is not None
    assert (error.code, error.retryable) == ("provider_stream_error", False)


async def test_an_error_event_before_any_chunk_is_mapped_by_its_code(fake, provider):
    fake.script(Reply(chunks=(), error_event=internal_error_event()))
    items, error = await collect(provider)
    assert items == []
    assert error is not None
    assert (error.code, error.retryable) == ("provider_unavailable", True)


async def test_a_hang_is_a_retryable_timeout(fake):
    fake.script(Hang())
    provider = make_provider(fake, timeout_seconds=0.5)  # what is tested is the timeout
    try:
        items, error = await collect(provider)
    finally:
        await provider.aclose()
    assert items == []
    assert error is not None
    assert (error.code, error.retryable) == ("provider_timeout", True)
    assert len(fake.requests) == 1


async def test_a_stall_after_chunks_is_a_timeout_that_keeps_the_text(fake):
    fake.script(Reply(chunks=("Half of it",), stall_after=True))
    provider = make_provider(fake, timeout_seconds=1)
    try:
        items, error = await collect(provider)
    finally:
        await provider.aclose()
    assert texts(items) == ["Half of it"]
    assert error is not None
    assert (error.code, error.retryable) == ("provider_timeout", False)


async def test_a_reader_that_stops_early_releases_the_stream(fake):
    """The worker leaves the stream on a cancel: the HTTP stream is closed at once, not left to
    the timeout, and the provider keeps working."""
    fake.script(Reply(chunks=("First words",), stall_after=True), Reply())
    provider = make_provider(fake, timeout_seconds=60)
    try:
        async with asyncio.timeout(10):  # a guard: closing must not wait for the 60 s timeout
            stream = provider.stream(CONVERSATION, GenerationOptions())
            assert await anext(stream) == Delta("First words")
            await stream.aclose()  # type: ignore[attr-defined]
            items, error = await collect(provider)
    finally:
        await provider.aclose()
    assert error is None
    assert "".join(texts(items)) == "Hello from Gemini."
    assert len(fake.streams) == 2


async def test_a_refused_connection_is_retryable(fake):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    provider = GeminiProvider(
        api_key=API_KEY,
        model=MODEL,
        timeout_seconds=1,
        base_url=f"http://127.0.0.1:{closed_port}",
    )
    try:
        items, error = await collect(provider)
    finally:
        await provider.aclose()
    assert items == []
    assert error is not None
    assert (error.code, error.retryable) == ("provider_unavailable", True)


async def test_title_is_one_cheap_call_cleaned_up(fake, provider):
    fake.script_plain(Reply(chunks=['Title: "Weekend In Porto."\n'], thoughts=("hmm",)))
    title = await provider.title("  Plan a weekend in Porto with kids, please  ")
    assert title == "Weekend In Porto"
    [sent] = fake.requests
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.system_instruction == TITLE_INSTRUCTION
    assert sent.turns == [("user", "  Plan a weekend in Porto with kids, please  ")]
    config = sent.generation_config
    assert config["thinkingConfig"] == {"thinkingBudget": 0}
    assert config["maxOutputTokens"] == TITLE_MAX_TOKENS


async def test_title_is_cut_to_sixty_characters_on_a_word(fake, provider):
    fake.script_plain(Reply(chunks=["A " + "very " * 20 + "long title"]))
    title = await provider.title("hello")
    assert len(title) <= 60
    assert title.startswith("A very very")
    assert title.endswith("very")


@pytest.mark.parametrize(
    "behaviour",
    [server_error(), rate_limited(), Reply(chunks=['""']), prompt_blocked(), Hang()],
)
async def test_title_falls_back_to_the_first_words(fake, provider, behaviour):
    fake.script_plain(behaviour)
    title = await provider.title("What is the best way to learn Rust quickly?")
    assert title == "What is the best way to"
    assert len(fake.requests) == 1


async def test_title_of_another_model_leaves_thinking_alone(fake):
    provider = make_provider(fake, model="gemini-2.5-pro")
    try:
        assert await provider.title("hello there") == "Trip Ideas For Paris"
    finally:
        await provider.aclose()
    [sent] = fake.requests
    assert sent.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert "thinkingConfig" not in sent.generation_config


# --- end to end through the app -----------------------------------------------------------------
@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def create_room(client, auth, **body) -> int:
    response = await client.post("/chatroom", json=body, headers=auth)
    assert response.status_code == 201, response.text
    room_id: int = response.json()["id"]
    return room_id


async def exchange(client, auth, room_id, content) -> tuple[list[tuple[str, str, str]], dict]:
    """Send a message; return the reply's SSE events and its final message."""
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    events = await read_sse(client, response.json()["stream_url"], auth)
    assert events[-1][1] in {"done", "error"}, events
    return events, json.loads(events[-1][2])


def streamed_text(events: list[tuple[str, str, str]]) -> str:
    return "".join(json.loads(data)["text"] for _id, event, data in events if event == "delta")


async def test_replies_come_from_gemini_with_the_system_prompt_and_history(client, fake, alice):
    room = await create_room(client, alice, name="Travel", system_prompt="Answer in one line.")
    fake.script(Reply(chunks=("Lisbon", " in May."), prompt_tokens=20, output_tokens=4))
    events, first = await exchange(client, alice, room, "Where should I go?")
    assert events[-1][1] == "done"
    assert first["status"] == "completed"
    assert first["content"] == streamed_text(events) == "Lisbon in May."
    assert first["model"] == MODEL
    assert first["finish_reason"] == "stop"
    assert first["usage"] == {
        "prompt_tokens": 20,
        "output_tokens": 4,
        "thinking_tokens": None,
        "cached_tokens": None,
    }
    assert first["error"] is None

    fake.script(
        Reply(chunks=("Mild and", " sunny."), output_tokens=5, thoughts_tokens=17, thoughts=("?",))
    )
    _, second = await exchange(client, alice, room, "Why?")
    assert second["content"] == "Mild and sunny."
    assert second["usage"] == {
        "prompt_tokens": 12,
        "output_tokens": 5,
        "thinking_tokens": 17,
        "cached_tokens": None,
    }

    assert len(fake.streams) == 2
    assert fake.plain_calls == []  # a named room gets no title call
    sent = fake.streams[-1]
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.system_instruction == "Answer in one line."
    assert sent.turns == [
        ("user", "Where should I go?"),
        ("model", "Lisbon in May."),
        ("user", "Why?"),
    ]


async def test_a_new_room_is_titled_by_gemini(client, fake, alice):
    room = await create_room(client, alice)
    fake.script_plain(Reply(chunks=["'Packing For Iceland'"]))
    _, final = await exchange(client, alice, room, "What should I pack for Iceland in winter?")
    assert final["status"] == "completed"
    detail = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    assert detail["name"] == "Packing For Iceland"
    [titled] = fake.plain_calls
    assert titled.turns == [("user", "What should I pack for Iceland in winter?")]


async def test_a_per_minute_rate_limit_is_retried_then_succeeds(client, fake, alice):
    room = await create_room(client, alice, name="r")
    fake.script(rate_limited("0.05s"), Reply(chunks=("Made it.",)))
    events, final = await exchange(client, alice, room, "hello")
    assert final["status"] == "completed"
    assert final["content"] == "Made it."
    assert [event for _id, event, _data in events] == ["delta", "done"]
    assert len(fake.streams) == 2


async def test_a_server_error_every_time_fails_after_all_attempts(client, fake, alice):
    room = await create_room(client, alice, name="r")
    fake.script(server_error(500))
    events, final = await exchange(client, alice, room, "hello")
    assert events[-1][1] == "error"
    assert final["status"] == "failed"
    assert final["error"] == "provider_unavailable"
    assert final["content"] == ""
    assert len(fake.streams) == 3  # AI_MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        pytest.param(bad_request(), "provider_bad_request", id="400"),
        pytest.param(daily_quota_exhausted(), "provider_quota_exhausted", id="429-per-day"),
        pytest.param(invalid_api_key(), "provider_auth", id="bad-key"),
        pytest.param(model_not_found(), "provider_not_found", id="404"),
    ],
)
async def test_a_permanent_error_fails_fast_and_gives_the_slot_back(
    client, fake, alice, behaviour, code
):
    room = await create_room(client, alice, name="r")
    fake.script(behaviour)
    events, final = await exchange(client, alice, room, "hello")
    assert events[-1][1] == "error"
    assert (final["status"], final["error"]) == ("failed", code)
    assert len(fake.streams) == 1
    # The failed reply released its daily slot: the next send still has 4 of 5 left.
    again = await client.post(f"/chatroom/{room}/message", json={"content": "x"}, headers=alice)
    assert again.headers["X-RateLimit-Remaining"] == "4"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(chunks=("Partial ", "answer"), break_after=True), id="dropped"),
        pytest.param(
            Reply(chunks=("Partial ", "answer"), error_event=internal_error_event()),
            id="error-event",
        ),
    ],
)
async def test_a_mid_stream_error_keeps_the_partial_text(client, fake, alice, reply):
    room = await create_room(client, alice, name="r")
    fake.script(reply)
    events, final = await exchange(client, alice, room, "hello")
    assert events[-1][1] == "error"
    assert final["status"] == "failed"
    assert final["error"] == "provider_stream_error"
    assert final["content"] == streamed_text(events) == "Partial answer"
    assert len(fake.streams) == 1  # never retried once text was shown


@pytest.mark.parametrize(
    ("reply", "content", "finish_reason"),
    [
        pytest.param(prompt_blocked("SAFETY"), "", "safety", id="prompt"),
        pytest.param(safety_stop(("Some text",)), "Some text", "safety", id="finish"),
        pytest.param(
            Reply(chunks=(), finish_reason="PROHIBITED_CONTENT"), "", "prohibited_content"
        ),
    ],
)
async def test_a_safety_block_ends_the_reply_blocked(
    client, fake, alice, reply, content, finish_reason
):
    room = await create_room(client, alice, name="r")
    fake.script(reply)
    events, final = await exchange(client, alice, room, "something unsafe")
    assert events[-1][1] == "error"
    assert final["status"] == "blocked"
    assert final["error"] == "safety_block"
    assert final["finish_reason"] == finish_reason
    assert final["content"] == content
    assert len(fake.streams) == 1


@pytest.mark.parametrize(
    "settings_overrides", [{"ai_timeout_seconds": 1, "ai_max_attempts": 2}], indirect=True
)
async def test_a_hanging_server_times_out_after_all_attempts(client, fake, alice):
    room = await create_room(client, alice, name="r")
    fake.script(Hang())
    events, final = await exchange(client, alice, room, "hello")
    assert events[-1][1] == "error"
    assert (final["status"], final["error"]) == ("failed", "provider_timeout")
    assert len(fake.streams) == 2
