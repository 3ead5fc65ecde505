"""The model catalogue built from the settings: several providers side by side, the default
model as the single-provider settings always chose it, the tier rules and their override."""

from __future__ import annotations

from typing import Any

import pytest

from gemini_backend.ai.catalogue import CatalogueError, build_catalogue
from gemini_backend.ai.registry import ProviderRegistry
from gemini_backend.config import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_demo_models_are_always_there_and_demo_is_the_default():
    catalogue = build_catalogue(settings())
    assert [m.id for m in catalogue.models] == ["demo", "demo-pro"]
    assert catalogue.default == "demo"
    demo, pro = catalogue.models
    assert (demo.provider, demo.tiers, demo.supports) == (
        "demo",
        ("basic", "pro"),
        ("images", "pdf", "search"),
    )
    assert pro.tiers == ("pro",)
    assert pro.supports == ("images", "pdf", "thinking", "search")


def test_gemini_and_an_openai_server_side_by_side():
    catalogue = build_catalogue(
        settings(
            gemini_api_key="k",
            gemini_models="gemini-2.5-pro,gemini-2.0-flash-lite",
            openai_base_url="http://127.0.0.1:9/v1",
            openai_models="llama-3.1-8b",
            openai_context_tokens=32000,
        )
    )
    ids = [m.id for m in catalogue.models]
    # GEMINI_MODEL (the default's) first, then the lists; OPENAI_MODEL is listed too.
    assert ids == [
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.0-flash-lite",
        "gpt-4o-mini",
        "llama-3.1-8b",
        "demo",
        "demo-pro",
    ]
    assert catalogue.default == "gemini-2.5-flash"  # AI_PROVIDER=auto with a Gemini key
    by_id = {m.id: m for m in catalogue.models}
    flash, pro = by_id["gemini-2.5-flash"], by_id["gemini-2.5-pro"]
    lite, llama = by_id["gemini-2.0-flash-lite"], by_id["llama-3.1-8b"]
    assert flash.display_name == "Gemini 2.5 Flash"
    assert flash.supports == ("images", "pdf", "thinking", "search")
    assert flash.tiers == ("basic", "pro")
    assert pro.tiers == ("pro",)
    assert lite.supports == ("images", "pdf")  # no thinking before 2.5, no Search on Lite
    assert (llama.provider, llama.context_tokens, llama.supports) == (
        "openai",
        32000,
        ("images",),
    )


@pytest.mark.parametrize(
    ("values", "default"),
    [
        (
            {"ai_provider": "openai", "openai_base_url": "http://x/v1", "gemini_api_key": "k"},
            "gpt-4o-mini",
        ),
        ({"ai_provider": "demo", "gemini_api_key": "k"}, "demo"),
        ({"openai_base_url": "http://x/v1", "openai_model": "qwen"}, "qwen"),
        ({"gemini_api_key": "k", "default_model": "demo-pro"}, "demo-pro"),
    ],
)
def test_the_default_model(values, default):
    assert build_catalogue(settings(**values)).default == default


def test_pro_models_overrides_the_built_in_rule():
    catalogue = build_catalogue(settings(gemini_api_key="k", pro_models="gemini-2.5-flash"))
    tiers = {m.id: m.tiers for m in catalogue.models}
    assert tiers == {
        "gemini-2.5-flash": ("pro",),
        "demo": ("basic", "pro"),
        "demo-pro": ("basic", "pro"),
    }


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"ai_provider": "gemini"}, "GEMINI_API_KEY"),
        ({"ai_provider": "openai"}, "OPENAI_BASE_URL"),
        ({"default_model": "gpt-5"}, "DEFAULT_MODEL"),
        ({"pro_models": "gemini-9"}, "PRO_MODELS"),
        ({"openai_base_url": "http://x/v1", "openai_model": "demo"}, "two providers"),
    ],
)
def test_settings_that_cannot_be_served_are_refused(values, words):
    with pytest.raises(CatalogueError, match=words):
        build_catalogue(settings(**values))


async def test_the_registry_holds_one_provider_per_model_and_closes_them():
    registry = ProviderRegistry.from_settings(
        settings(gemini_api_key="k", openai_base_url="http://127.0.0.1:9/v1")
    )
    try:
        assert registry.default_provider.model == "gemini-2.5-flash"
        found = {m.id: registry.provider(m.id) for m in registry.catalogue.models}
        assert {m: (p.name, p.model) for m, p in found.items() if p is not None} == {
            "gemini-2.5-flash": ("gemini", "gemini-2.5-flash"),
            "gpt-4o-mini": ("openai", "gpt-4o-mini"),
            "demo": ("demo", "demo"),
            "demo-pro": ("demo", "demo-pro"),
        }
        assert registry.provider("nope") is None
    finally:
        await registry.aclose()
