"""Making the provider object that serves one model of the catalogue."""

from __future__ import annotations

from gemini_backend.ai.base import Provider
from gemini_backend.ai.catalogue import ModelInfo
from gemini_backend.ai.demo import DemoProvider
from gemini_backend.config import Settings


def create_provider(settings: Settings, model: ModelInfo) -> Provider:
    if model.provider == "demo":
        return DemoProvider(settings.demo_chunk_delay_ms, model=model.id)
    if model.provider == "gemini":
        from gemini_backend.ai.gemini import GeminiProvider

        assert settings.gemini_api_key is not None  # the catalogue lists Gemini only then
        return GeminiProvider(
            api_key=settings.gemini_api_key.get_secret_value(),
            model=model.id,
            timeout_seconds=settings.ai_timeout_seconds,
            base_url=settings.gemini_base_url,
            inline_max_bytes=settings.gemini_inline_max_bytes,
        )
    from gemini_backend.ai.openai_compat import OpenAIProvider

    assert settings.openai_base_url  # the catalogue lists OpenAI models only then
    return OpenAIProvider(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        model=model.id,
        timeout_seconds=settings.ai_timeout_seconds,
    )
