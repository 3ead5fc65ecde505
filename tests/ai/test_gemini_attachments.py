"""Attachments reaching Gemini: the real SDK against the fake Gemini API (tests/ai/fake_gemini.py),
which checks the wire format: inline data (media type and base64 bytes) up to the inline limit,
the Files API's resumable upload and a `fileData` reference above it, the upload reused while
the provider's copy lives (47 h) and made again after. Then end to end through the app: a PNG
and a PDF uploaded, sent with a message, seen by the fake in the right parts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gemini_backend.ai.base import (
    Attachment,
    Conversation,
    Finished,
    GenerationOptions,
    ProviderError,
    Turn,
)
from gemini_backend.ai.gemini import FILE_REUSE_SECONDS, GeminiProvider
from tests.ai.fake_gemini import API_KEY, FakeGemini, Reply, file_parts, inline_files
from tests.attachments import files
from tests.helpers import bearer, read_sse, sign_in

MODEL = "gemini-2.5-flash"


@pytest.fixture
def fake(gemini_server: FakeGemini) -> FakeGemini:
    return gemini_server


def attachment(id_: int, name: str, media_type: str, data: bytes) -> Attachment:
    async def read() -> bytes:
        return data

    return Attachment(id_, name, media_type, len(data), "", read)


async def run(provider: GeminiProvider, conversation: Conversation) -> None:
    items = [item async for item in provider.stream(conversation, GenerationOptions())]
    assert isinstance(items[-1], Finished), items


async def test_inline_up_to_the_limit_then_the_files_api(fake):
    now = [1000.0]
    provider = GeminiProvider(
        api_key=API_KEY,
        model=MODEL,
        timeout_seconds=5,
        base_url=fake.url,
        inline_max_bytes=4000,
        clock=lambda: now[0],
    )
    png, pdf, big = files.png(), files.pdf(), files.png(extra=5000)
    turn = Turn(
        "user",
        "What are these?",
        1,
        (
            attachment(1, "p.png", "image/png", png),
            attachment(2, "s.pdf", "application/pdf", pdf),
            attachment(3, "big.png", "image/png", big),
        ),
    )
    try:
        await run(provider, Conversation(None, [turn]))
        [request] = fake.streams
        [content] = request.contents
        assert content["role"] == "user"
        assert content["parts"][0] == {"text": "What are these?"}
        assert inline_files(content) == [("image/png", png), ("application/pdf", pdf)]
        [upload] = fake.uploads
        assert upload.finalized
        assert upload.data == big
        assert (upload.mime_type, upload.display_name) == ("image/png", "big.png")
        assert file_parts(content) == [{"mimeType": "image/png", "fileUri": upload.uri}]

        # Within 47 h the upload is reused; after that it is made again.
        await run(provider, Conversation(None, [turn]))
        assert len(fake.uploads) == 1
        now[0] += FILE_REUSE_SECONDS + 1
        await run(provider, Conversation(None, [turn]))
        assert len(fake.uploads) == 2
        latest = fake.streams[-1].contents[0]
        assert file_parts(latest) == [{"mimeType": "image/png", "fileUri": fake.uploads[1].uri}]
    finally:
        await provider.aclose()


async def test_a_turn_of_files_alone_has_no_empty_text_part(fake):
    provider = GeminiProvider(api_key=API_KEY, model=MODEL, timeout_seconds=5, base_url=fake.url)
    data = b"a,b\n1,2\n"
    try:
        turn = Turn("user", "", 1, (attachment(1, "t.csv", "text/csv", data),))
        await run(provider, Conversation(None, [turn]))
        [content] = fake.streams[0].contents
        assert len(content["parts"]) == 1
        assert inline_files(content) == [("text/csv", data)]
    finally:
        await provider.aclose()


# --- end to end -----------------------------------------------------------------------------------
@pytest.fixture
def settings_overrides(fake: FakeGemini) -> dict[str, Any]:
    return {
        "ai_provider": "gemini",
        "gemini_api_key": API_KEY,
        "gemini_model": MODEL,
        "gemini_base_url": fake.url,
        "ai_timeout_seconds": 5,
        "gemini_inline_max_bytes": 3000,
    }


async def test_a_png_and_a_pdf_sent_reach_gemini_in_their_parts(client, fake, alice_auth):
    room = (await client.post("/chatroom", json={"name": "f"}, headers=alice_auth)).json()["id"]
    png, pdf, big = files.png(), files.pdf(), files.png(extra=4000)
    ids = []
    for name, data in (("p.png", png), ("s.pdf", pdf), ("big.png", big)):
        response = await client.post(
            f"/chatroom/{room}/attachments", files={"file": (name, data)}, headers=alice_auth
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    fake.script(Reply(chunks=("A red square", " and an empty PDF.")))
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "Describe", "attachment_ids": ids},
        headers=alice_auth,
    )
    assert sent.status_code == 202, sent.text
    events = await read_sse(client, sent.json()["stream_url"], alice_auth)
    assert events[-1][1] == "done", events
    assert json.loads(events[-1][2])["content"] == "A red square and an empty PDF."
    [request] = fake.streams
    [content] = request.contents
    assert content["parts"][0] == {"text": "Describe"}
    assert inline_files(content) == [("image/png", png), ("application/pdf", pdf)]
    [upload] = fake.uploads
    assert upload.data == big
    assert file_parts(content) == [{"mimeType": "image/png", "fileUri": upload.uri}]


@pytest.fixture
async def alice_auth(client):
    return bearer(await sign_in(client))


# --- the Files API's processing -------------------------------------------------------------------
def files_api_provider(fake: FakeGemini, **options: Any) -> GeminiProvider:
    """Every attachment through the Files API; looks at a processing file every 10 ms."""
    return GeminiProvider(
        api_key=API_KEY,
        model=MODEL,
        timeout_seconds=5,
        base_url=fake.url,
        inline_max_bytes=0,
        file_poll_seconds=0.01,
        **options,
    )


def pdf_turn() -> Turn:
    return Turn("user", "Read it", 1, (attachment(7, "long.pdf", "application/pdf", files.pdf()),))


async def test_a_file_still_processing_is_awaited_until_active(fake):
    fake.processing_polls = 2
    provider = files_api_provider(fake)
    try:
        await run(provider, Conversation(None, [pdf_turn()]))
        [upload] = fake.uploads
        # Two looks answered PROCESSING, the third ACTIVE, and only then the generate call
        # (which the fake refuses for a file that is not ACTIVE).
        assert (upload.gets, upload.state) == (3, "ACTIVE")
        [request] = fake.streams
        assert file_parts(request.contents[0]) == [
            {"mimeType": "application/pdf", "fileUri": upload.uri}
        ]
        await run(provider, Conversation(None, [pdf_turn()]))  # reused: no upload, no look
        assert (len(fake.uploads), upload.gets) == (1, 3)
    finally:
        await provider.aclose()


async def test_a_file_that_fails_processing_ends_the_reply(fake):
    fake.processing_ends_as = "FAILED"
    provider = files_api_provider(fake)
    try:
        with pytest.raises(ProviderError) as failed:
            await run(provider, Conversation(None, [pdf_turn()]))
        assert failed.value.code == "attachment_processing_failed"
        assert not failed.value.retryable
        assert "long.pdf" in str(failed.value)
        assert fake.streams == []  # no generate call
        fake.processing_ends_as = "ACTIVE"
        await run(provider, Conversation(None, [pdf_turn()]))  # a failed upload is not reused
        assert len(fake.uploads) == 2
    finally:
        await provider.aclose()


async def test_a_file_processing_for_too_long_ends_the_reply(fake):
    fake.processing_polls = 1_000_000
    provider = files_api_provider(fake, file_wait_seconds=0.2)
    try:
        with pytest.raises(ProviderError) as failed:
            await run(provider, Conversation(None, [pdf_turn()]))
        assert failed.value.code == "attachment_processing_timeout"
        [upload] = fake.uploads
        # The looks back off (10, 20, 40, 80 ms...): a handful within the bound, no busy loop.
        assert 2 <= upload.gets <= 6
        assert fake.streams == []
    finally:
        await provider.aclose()


async def test_a_failed_file_fails_the_reply_through_the_api(client, fake, alice_auth):
    fake.processing_ends_as = "FAILED"
    room = (await client.post("/chatroom", json={"name": "f"}, headers=alice_auth)).json()["id"]
    big = files.png(extra=4000)  # above the inline limit of 3000: the Files API
    uploaded = await client.post(
        f"/chatroom/{room}/attachments", files={"file": ("big.png", big)}, headers=alice_auth
    )
    assert uploaded.status_code == 201, uploaded.text
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "Describe", "attachment_ids": [uploaded.json()["id"]]},
        headers=alice_auth,
    )
    assert sent.status_code == 202, sent.text
    events = await read_sse(client, sent.json()["stream_url"], alice_auth)
    assert events[-1][1] == "error", events
    final = json.loads(events[-1][2])
    assert (final["status"], final["error"]) == ("failed", "attachment_processing_failed")
    assert fake.streams == []
    usage = (await client.get("/user/usage", headers=alice_auth)).json()
    assert usage["used_today"] == 0  # a failed reply gives its slot back
