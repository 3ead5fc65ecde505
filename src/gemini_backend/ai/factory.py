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
    if choice == "gemini":
        if settings.gemini_api_key is None:
            raise ProviderNotAvailable("AI_PROVIDER=gemini needs GEMINI_API_KEY")
        from gemini_backend.ai.gemini import GeminiProvider

        return GeminiProvider(
            api_key=settings.gemini_api_key.get_secret_value(),
            model=settings.gemini_model,
            timeout_seconds=settings.ai_timeout_seconds,
            base_url=settings.gemini_base_url,
            inline_max_bytes=settings.gemini_inline_max_bytes,
        )
    if not settings.openai_base_url:
        raise ProviderNotAvailable("AI_PROVIDER=openai needs OPENAI_BASE_URL")
    from gemini_backend.ai.openai_compat import OpenAIProvider

    return OpenAIProvider(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        model=settings.openai_model,
        timeout_seconds=settings.ai_timeout_seconds,
    )
