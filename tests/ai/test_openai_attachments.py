"""Attachments reaching an OpenAI-compatible server, end to end through the app: the real
`openai` SDK against the fake server (tests/ai/fake_openai.py), which checks the content parts:
an image as an `image_url` data URL, a text file as a named text part, a PDF as a `file` part."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.ai.fake_openai import FakeOpenAI, Reply, data_url
from tests.attachments import files
from tests.helpers import bearer, read_sse, sign_in

MODEL = "gpt-4o-mini"


@pytest.fixture
def fake(openai_server: FakeOpenAI) -> FakeOpenAI:
    return openai_server


@pytest.fixture
def settings_overrides(fake: FakeOpenAI) -> dict[str, Any]:
    return {
        "ai_provider": "openai",
        "openai_base_url": fake.url + "/v1",
        "openai_api_key": "sk-test",
        "openai_model": MODEL,
        "ai_timeout_seconds": 5,
    }


async def test_files_go_as_content_parts(client, fake):
    auth = bearer(await sign_in(client))
    room = (await client.post("/chatroom", json={"name": "f"}, headers=auth)).json()["id"]
    png, pdf, notes = files.png(), files.pdf(), b"# Plan\n\nDay 1: beach\n"
    ids = []
    for name, data in (("p.png", png), ("notes.md", notes), ("s.pdf", pdf)):
        response = await client.post(
            f"/chatroom/{room}/attachments", files={"file": (name, data)}, headers=auth
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    fake.script(Reply(chunks=("Seen", " all three.")))
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "Look", "attachment_ids": ids},
        headers=auth,
    )
    assert sent.status_code == 202, sent.text
    events = await read_sse(client, sent.json()["stream_url"], auth)
    assert events[-1][1] == "done", events
    assert json.loads(events[-1][2])["content"] == "Seen all three."
    [request] = fake.completions
    [message] = request.body["messages"]
    assert message["role"] == "user"
    text, image, note, document = message["content"]
    assert text == {"type": "text", "text": "Look"}
    assert image["type"] == "image_url"
    assert data_url(image["image_url"]["url"]) == ("image/png", png)
    assert note == {"type": "text", "text": "[notes.md]\n# Plan\n\nDay 1: beach\n"}
    assert document["type"] == "file"
    assert document["file"]["filename"] == "s.pdf"
    assert data_url(document["file"]["file_data"]) == ("application/pdf", pdf)
