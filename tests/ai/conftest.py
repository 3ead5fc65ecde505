"""The fake provider servers the provider tests talk to, each started for a test and stopped
after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ai.fake_gemini import FakeGemini
from tests.ai.fake_openai import FakeOpenAI


@pytest.fixture
def gemini_server() -> Iterator[FakeGemini]:
    server = FakeGemini().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
