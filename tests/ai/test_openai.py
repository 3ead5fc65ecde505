"""The OpenAI-compatible provider: the real `openai` SDK against a fake server on loopback,
first directly (`provider.stream`, `provider.title`), then end to end through the app (send a
message, read the SSE stream, check the stored reply and what the server was sent)."""

from __future__ import annotations

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
from gemini_backend.ai.openai_compat import OpenAIProvider
from gemini_backend.ai.titles import clean_title, fallback_title
from tests.ai.fake_openai import (
    Behaviour,
    Fail,
    FakeOpenAI,
    Hang,
    Reply,
    bad_request,
    quota_exhausted,
    rate_limited,
    server_error,
)
from tests.helpers import bearer, read_sse, sign_in

MODEL = "llama-3.1-8b"
KEY = "sk-test"
MAX_ATTEMPTS = 3


@pytest.fixture
def fake(openai_server: FakeOpenAI) -> FakeOpenAI:
    return openai_server


@pytest.fixture
def settings_overrides(fake: FakeOpenAI, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The app talks to the fake; a test changes more with indirect parametrization."""
    return {
        "ai_provider": "openai",
        "openai_base_url": fake.url + "/v1",
        "openai_api_key": KEY,
        "openai_model": MODEL,
        # Generous enough that a loaded CI machine never times out a healthy call, so the
        # request counts below are exact; hang tests pay it per attempt.
        "ai_timeout_seconds": 3,
        "ai_max_attempts": MAX_ATTEMPTS,
        **getattr(request, "param", {}),
    }


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    made = OpenAIProvider(base_url=fake.url + "/v1", api_key=KEY, model=MODEL, timeout_seconds=1)
    yield made
    await made.aclose()


CONVERSATION = Conversation(
    "You are terse.",
    [Turn("user", "Hi"), Turn("assistant", "Hello."), Turn("user", "Capital of France?")],
)


async def collect(
    provider: OpenAIProvider,
    conversation: Conversation = CONVERSATION,
    options: GenerationOptions = GenerationOptions(),
) -> tuple[list[str], Finished | None, ProviderError | None]:
    """The texts, the `Finished` and the error of one `stream` call."""
    texts: list[str] = []
    finished: Finished | None = None
    try:
        async for item in provider.stream(conversation, options):
            assert finished is None, "nothing may follow Finished"
            if isinstance(item, Delta):
                texts.append(item.text)
            else:
                finished = item
    except ProviderError as exc:
        return texts, finished, exc
    return texts, finished, None


# --- the provider on its own --------------------------------------------------------------------
async def test_stream_yields_deltas_then_one_finished_with_usage(fake, provider):
    fake.script(
        Reply(
            chunks=["Par", "is", "."],
            prompt_tokens=21,
            completion_tokens=9,
            reasoning_tokens=4,
        )
    )
    texts, finished, error = await collect(provider)
    assert error is None
    assert texts == ["Par", "is", "."]
    assert finished == Finished("stop", Usage(21, 9, 4), blocked=False)
    assert provider.name == "openai"
    assert provider.model == MODEL

    [sent] = fake.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-stainless-retry-count"] == "0"
    assert sent.body["model"] == MODEL
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]


async def test_no_system_prompt_and_no_key(fake):
    keyless = OpenAIProvider(
        base_url=fake.url + "/v1", api_key=None, model="qwen2.5:0.5b", timeout_seconds=1
    )
    try:
        texts, finished, error = await collect(keyless, Conversation(None, [Turn("user", "hello")]))
    finally:
        await keyless.aclose()
    assert error is None
    assert "".join(texts) == "Hello from the fake."
    assert finished is not None
    assert finished.usage == Usage(11, 7, None)  # no reasoning tokens reported
    [sent] = fake.requests
    assert sent.headers["authorization"] == "Bearer not-needed"
    assert sent.body["model"] == "qwen2.5:0.5b"
    assert sent.body["messages"] == [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("reason", "expected", "blocked"),
    [
        ("stop", "stop", False),
        ("length", "max_tokens", False),
        ("content_filter", "safety", True),
        ("tool_calls", "tool_calls", False),
    ],
)
async def test_finish_reasons(fake, provider, reason, expected, blocked):
    fake.script(Reply(chunks=["Some text"], finish_reason=reason))
    texts, finished, error = await collect(provider)
    assert error is None
    assert texts == ["Some text"]
    assert finished is not None
    assert (finished.finish_reason, finished.blocked) == (expected, blocked)


@pytest.mark.parametrize(
    ("behaviour", "code", "retryable", "retry_after"),
    [
        (rate_limited(**{"retry-after": "2"}), "provider_rate_limited", True, 2.0),
        (
            rate_limited(**{"retry-after-ms": "250", "retry-after": "1"}),
            "provider_rate_limited",
            True,
            0.25,
        ),
        (rate_limited(), "provider_rate_limited", True, None),
        # A wait far beyond a per-minute limit: the worker must not sit on the job for it.
        (rate_limited(**{"retry-after": "3600"}), "provider_rate_limited", False, 3600.0),
        (quota_exhausted(), "provider_quota_exhausted", False, None),
        (server_error(500), "provider_unavailable", True, None),
        (server_error(502), "provider_unavailable", True, None),
        (server_error(503), "provider_unavailable", True, None),
        (Fail(408, "Request timeout."), "provider_unavailable", True, None),
        (Fail(409, "Conflict."), "provider_unavailable", True, None),
        (bad_request(), "provider_bad_request", False, None),
        (Fail(422, "Unprocessable.", "invalid_request_error"), "provider_bad_request", False, None),
        (Fail(401, "Invalid API key.", "invalid_request_error"), "provider_auth", False, None),
        (Fail(403, "Forbidden.", "permission_denied"), "provider_auth", False, None),
        (
            Fail(404, "The model does not exist.", "invalid_request_error"),
            "provider_not_found",
            False,
            None,
        ),
    ],
)
async def test_http_errors_are_mapped_and_not_retried_by_the_sdk(
    fake, provider, behaviour, code, retryable, retry_after
):
    fake.script(behaviour)
    texts, finished, error = await collect(provider)
    assert texts == []
    assert finished is None
    assert error is not None
    assert (error.code, error.retryable, error.retry_after) == (code, retryable, retry_after)
    assert len(fake.completions) == 1  # the SDK's own retries are off


async def test_no_answer_is_a_retryable_timeout(fake, provider):
    fake.script(Hang())
    texts, finished, error = await collect(provider)
    assert (texts, finished) == ([], None)
    assert error is not None
    assert (error.code, error.retryable) == ("provider_timeout", True)
    assert len(fake.completions) == 1


async def test_nothing_listening_is_unavailable():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is free again and nothing listens on it: the connection is refused.
    nowhere = OpenAIProvider(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, model=MODEL, timeout_seconds=1
    )
    try:
        _, _, error = await collect(nowhere)
    finally:
        await nowhere.aclose()
    assert error is not None
    assert (error.code, error.retryable) == ("provider_unavailable", True)


async def test_a_break_before_any_text_is_retryable(fake, provider):
    fake.script(Reply(chunks=[], break_after=True))
    texts, finished, error = await collect(provider)
    assert (texts, finished) == ([], None)
    assert error is not None
    assert (error.code, error.retryable) == ("provider_unavailable", True)


async def test_a_break_after_text_is_a_stream_error(fake, provider):
    fake.script(Reply(chunks=["Partial ", "answer"], break_after=True))
    texts, finished, error = await collect(provider)
    assert texts == ["Partial ", "answer"]
    assert finished is None
    assert error is not None
    assert (error.code, error.retryable) == ("provider_stream_error", False)


async def test_a_stall_after_text_is_a_timeout(fake, provider):
    fake.script(Reply(chunks=["Half"], stall_after=True))
    texts, finished, error = await collect(provider)
    assert texts == ["Half"]
    assert finished is None
    assert error is not None
    assert (error.code, error.retryable) == ("provider_timeout", False)


@pytest.mark.parametrize(("chunks", "retryable"), [([], True), (["Cut", " short"], False)])
async def test_a_stream_without_a_finish_reason_is_an_error(fake, provider, chunks, retryable):
    fake.script(Reply(chunks=chunks, done_early=True))
    texts, finished, error = await collect(provider)
    assert texts == chunks
    assert finished is None
    assert error is not None
    assert (error.code, error.retryable) == ("provider_stream_error", retryable)


@pytest.mark.parametrize(
    ("chunks", "event", "code", "retryable"),
    [
        ([], {"message": "overloaded", "type": "server_error"}, "provider_stream_error", True),
        (["Hi"], {"message": "overloaded", "type": "server_error"}, "provider_stream_error", False),
        (
            [],
            {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"},
            "provider_quota_exhausted",
            False,
        ),
        (
            [],
            {"message": "slow down", "code": "rate_limit_exceeded"},
            "provider_rate_limited",
            True,
        ),
    ],
)
async def test_error_events_inside_a_stream(fake, provider, chunks, event, code, retryable):
    fake.script(Reply(chunks=chunks, error_event=event))
    texts, finished, error = await collect(provider)
    assert texts == chunks
    assert finished is None
    assert error is not None
    assert (error.code, error.retryable) == (code, retryable)


async def test_title_is_one_cheap_plain_call(fake, provider):
    fake.script_plain(Reply(chunks=['"Paris Trip Ideas."']))
    assert await provider.title("What should I see in Paris next spring?") == "Paris Trip Ideas"
    [sent] = fake.requests
    assert sent.body.get("stream") in (None, False)
    assert sent.body["model"] == MODEL
    assert sent.body["max_tokens"] <= 32
    assert sent.body["messages"][0]["role"] == "system"
    assert "title" in sent.body["messages"][0]["content"].lower()
    assert sent.body["messages"][-1] == {
        "role": "user",
        "content": "What should I see in Paris next spring?",
    }
    assert sent.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (Reply(chunks=["Title: 'Weekend in Rome!'\nHope this helps."]), "Weekend in Rome"),
        (Reply(chunks=["“Quick Pasta Recipes”"]), "Quick Pasta Recipes"),
        (Reply(chunks=["  \n "]), "Plan a cheap weekend in Rome"),
        (server_error(), "Plan a cheap weekend in Rome"),
        (Fail(401, "bad key", "invalid_request_error"), "Plan a cheap weekend in Rome"),
        (Hang(), "Plan a cheap weekend in Rome"),
    ],
)
async def test_title_cleaning_and_fallback(fake, provider, behaviour, expected):
    fake.script_plain(behaviour)
    title = await provider.title("Plan a cheap weekend in Rome for two people please")
    assert title == expected


def test_title_helpers():
    long = "An Extraordinarily Long Title About Many Things " * 3
    cleaned = clean_title(long)
    assert len(cleaned) <= 60
    assert long.startswith(cleaned)
    assert not cleaned.endswith(" ")
    assert fallback_title("   ") == "New chat"
    assert fallback_title("x" * 100) == "x" * 60


async def test_the_api_key_is_never_logged(fake):
    secret = "sk-live-0123456789abcdef"
    keyed = OpenAIProvider(
        base_url=fake.url + "/v1", api_key=secret, model=MODEL, timeout_seconds=1
    )
    # Some servers echo the key they refuse.
    fake.script(Fail(401, f"Incorrect API key provided: {secret}.", "invalid_request_error"))
    fake.script_plain(Fail(401, f"Incorrect API key provided: {secret}.", "invalid_request_error"))
    try:
        with capture_logs() as logs:
            _, _, error = await collect(keyed)
            title = await keyed.title("hello there")
    finally:
        await keyed.aclose()
    assert error is not None
    assert error.code == "provider_auth"
    assert secret not in str(error)
    assert title == "hello there"
    assert [entry["event"] for entry in logs] == ["provider_call_failed", "title_fallback"]
    assert logs[0]["code"] == "provider_auth"
    assert secret not in repr(logs)
    assert secret not in repr(keyed)
    assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"


# --- end to end through the app -----------------------------------------------------------------
@pytest.fixture
async def alice(client, app):
    yield bearer(await sign_in(client))
    # The app does not close its provider (Services.aclose): release the SDK clients' pooled
    # connections to the fake here, in whichever processes made replies.
    for services in (app.state.services, getattr(app.state, "worker", None)):
        provider = getattr(services, "provider", None)
        if isinstance(provider, OpenAIProvider):
            await provider.aclose()


@pytest.fixture
async def room(client, alice):
    response = await client.post(
        "/chatroom",
        json={"name": "travel", "system_prompt": "You answer in French."},
        headers=alice,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def send(client, auth, room_id, content):
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    return response


async def outcome(client, auth, receipt) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """The reply's stream events and its final message (from the done/error event)."""
    events = await read_sse(client, receipt["stream_url"], auth)
    assert events[-1][1] in {"done", "error"}, events
    final = json.loads(events[-1][2])
    stored = await client.get(
        f"/chatroom/{final['chatroom_id']}/messages/{final['id']}", headers=auth
    )
    assert stored.json() == final
    return events, final


def deltas(events) -> list[str]:
    return [json.loads(data)["text"] for _, name, data in events if name == "delta"]


async def test_reply_streams_and_the_conversation_is_sent(client, alice, room, fake):
    fake.script(
        Reply(
            chunks=["Bon", "jour", " !"], prompt_tokens=30, completion_tokens=5, reasoning_tokens=2
        )
    )
    receipt = (await send(client, alice, room, "hello")).json()
    events, final = await outcome(client, alice, receipt)
    # In order and complete; chunks that arrive while an append is in flight share an event.
    assert "".join(deltas(events)) == "Bonjour !"
    assert events[-1][1] == "done"
    assert final["status"] == "completed"
    assert final["content"] == "Bonjour !"
    assert final["error"] is None
    assert final["finish_reason"] == "stop"
    assert final["model"] == MODEL
    assert final["usage"] == {
        "prompt_tokens": 30,
        "output_tokens": 5,
        "thinking_tokens": 2,
        "cached_tokens": None,
    }

    fake.script(Reply(chunks=["Encore"], finish_reason="length"))
    receipt = (await send(client, alice, room, "again")).json()
    _, final = await outcome(client, alice, receipt)
    assert (final["status"], final["content"]) == ("completed", "Encore")
    assert final["finish_reason"] == "max_tokens"
    assert final["usage"]["thinking_tokens"] is None

    first, second = fake.completions
    assert first.body["messages"] == [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "hello"},
    ]
    assert second.body["messages"] == [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "again"},
    ]
    for sent in (first, second):
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.body["model"] == MODEL
        assert sent.body["stream_options"] == {"include_usage": True}
    assert fake.plain_completions == []  # a named room asks for no title


# The two timeout cases wait out AI_TIMEOUT_SECONDS on every attempt: 1 s rather than the
# module's 3 s (a healthy call here answers within milliseconds).
QUICK_TIMEOUT = {"ai_timeout_seconds": 1}


@pytest.mark.parametrize(
    ("script", "status", "error", "content", "requests", "settings_overrides"),
    [
        (
            [rate_limited(**{"retry-after-ms": "10"}), Reply(chunks=["Fine", "."])],
            "completed",
            None,
            "Fine.",
            2,
            {},
        ),
        ([server_error()], "failed", "provider_unavailable", "", MAX_ATTEMPTS, {}),
        ([bad_request()], "failed", "provider_bad_request", "", 1, {}),
        ([quota_exhausted()], "failed", "provider_quota_exhausted", "", 1, {}),
        (
            [Fail(401, "Invalid API key.", "invalid_request_error")],
            "failed",
            "provider_auth",
            "",
            1,
            {},
        ),
        ([Hang()], "failed", "provider_timeout", "", MAX_ATTEMPTS, QUICK_TIMEOUT),
        (
            [Reply(chunks=["Partial ", "answer"], break_after=True)],
            "failed",
            "provider_stream_error",
            "Partial answer",
            1,
            {},
        ),
        (
            [Reply(chunks=["Half"], stall_after=True)],
            "failed",
            "provider_timeout",
            "Half",
            1,
            QUICK_TIMEOUT,
        ),
        (
            [Reply(chunks=[], break_after=True), Reply(chunks=["Second", " try"])],
            "completed",
            None,
            "Second try",
            2,
            {},
        ),
    ],
    ids=[
        "429-then-success",
        "500-always",
        "400",
        "insufficient-quota",
        "401",
        "hang",
        "break-mid-stream",
        "stall-mid-stream",
        "break-before-text",
    ],
    indirect=["settings_overrides"],
)
async def test_provider_failures_end_to_end(
    client, alice, room, fake, script: list[Behaviour], status, error, content, requests
):
    fake.script(*script)
    receipt = (await send(client, alice, room, "hello")).json()
    events, final = await outcome(client, alice, receipt)
    assert (final["status"], final["error"], final["content"]) == (status, error, content)
    assert "".join(deltas(events)) == content  # what the client saw is what was kept
    assert events[-1][1] == ("done" if status == "completed" else "error")
    assert len(fake.completions) == requests
    if status == "completed":
        assert final["finish_reason"] == "stop"
    else:
        # A failed reply gives the daily slot back; the next message is answered normally.
        await slot_is_back_and_next_reply_works(client, alice, room, fake)


async def slot_is_back_and_next_reply_works(client, auth, room_id, fake) -> None:
    fake.script(Reply(chunks=["Back", " again"]))
    again = await send(client, auth, room_id, "once more")
    assert again.headers["X-RateLimit-Remaining"] == "4"
    _, final = await outcome(client, auth, again.json())
    assert (final["status"], final["content"]) == ("completed", "Back again")


async def test_content_filter_blocks_the_reply(client, alice, room, fake):
    fake.script(Reply(chunks=["I can", "not"], finish_reason="content_filter"))
    receipt = (await send(client, alice, room, "something bad")).json()
    events, final = await outcome(client, alice, receipt)
    assert events[-1][1] == "error"
    assert final["status"] == "blocked"
    assert final["error"] == "safety_block"
    assert final["finish_reason"] == "safety"
    assert final["content"] == "I cannot"
    assert len(fake.completions) == 1
    await slot_is_back_and_next_reply_works(client, alice, room, fake)


async def test_a_new_chat_gets_its_title_from_the_provider(client, alice, fake):
    created = await client.post("/chatroom", json={}, headers=alice)
    room_id = created.json()["id"]
    assert created.json()["name"] == "New chat"
    fake.script_plain(Reply(chunks=['"Paris Trip Ideas."']))
    receipt = (await send(client, alice, room_id, "What should I see in Paris?")).json()
    _, final = await outcome(client, alice, receipt)
    assert final["status"] == "completed"
    detail = (await client.get(f"/chatroom/{room_id}", headers=alice)).json()
    assert detail["name"] == "Paris Trip Ideas"
    [title_call] = fake.plain_completions
    assert title_call.body["messages"][-1]["content"] == "What should I see in Paris?"
    assert len(fake.completions) == 1
