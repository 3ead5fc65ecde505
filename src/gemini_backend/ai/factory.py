"""Choosing the provider from the settings (AI_PROVIDER=auto|gemini|openai|demo)."""

from __future__ import annotations

from gemini_backend.ai.base import Provider
from gemini_backend.ai.demo import DemoProvider
from gemini_backend.config import Settings


class ProviderNotAvailable(RuntimeError):
    pass


def create_provider(settings: Settings) -> Provider:
    choice = settings.ai_provider
    if choice == "auto":
        if settings.gemini_api_key is not None:
            choice = "gemini"
        elif settings.openai_base_url:
            choice = "openai"
        else:
            choice = "demo"
    if choice == "demo":
        return DemoProvider(settings.demo_chunk_delay_ms)
    # The Gemini and OpenAI-compatible providers are not built yet: refuse to start rather than
    # pretend, so a configured key never silently gets demo replies.
    raise ProviderNotAvailable(
        f"AI provider {choice!r} is configured but not implemented yet; "
        "unset GEMINI_API_KEY / OPENAI_BASE_URL or set AI_PROVIDER=demo"
    )
