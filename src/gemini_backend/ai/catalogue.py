"""The models this deployment offers, side by side: every configured provider's, with what each
supports and which plans may use it (GET /models, a room's `model`). Pure data, built once from
the settings; ai/registry.py holds a provider object for each entry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gemini_backend.config import Settings

Capability = Literal["images", "pdf", "thinking", "search"]
PlanName = Literal["basic", "pro"]  # users/tier.py's Tier (ai/ sits below users/)
ProviderName = Literal["gemini", "openai", "demo"]

DEMO_MODEL = "demo"
DEMO_PRO_MODEL = "demo-pro"  # the demo with the Pro-only options: tier rules testable offline
GEMINI_CONTEXT_TOKENS = 1_048_576
DEMO_CONTEXT_TOKENS = 32_768
ALL_TIERS: tuple[PlanName, ...] = ("basic", "pro")
PRO_ONLY: tuple[PlanName, ...] = ("pro",)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    provider: ProviderName
    display_name: str
    context_tokens: int
    supports: tuple[Capability, ...]
    tiers: tuple[PlanName, ...]

    def can(self, capability: Capability) -> bool:
        return capability in self.supports


class CatalogueError(ValueError):
    """The settings name models that cannot be offered (a clash, an unknown default)."""


@dataclass(frozen=True, slots=True)
class ModelCatalogue:
    models: tuple[ModelInfo, ...]
    default: str

    def get(self, model_id: str) -> ModelInfo | None:
        for info in self.models:
            if info.id == model_id:
                return info
        return None

    @property
    def default_model(self) -> ModelInfo:
        found = self.get(self.default)
        assert found is not None  # checked when the catalogue is built
        return found


def build_catalogue(settings: Settings) -> ModelCatalogue:
    """The configured models: Gemini's (GEMINI_MODEL, GEMINI_MODELS) while GEMINI_API_KEY is
    set, the OpenAI-compatible server's (OPENAI_MODEL, OPENAI_MODELS) while OPENAI_BASE_URL is,
    and the demo models always; Pro-only per PRO_MODELS or the built-in rule."""
    entries: list[ModelInfo] = []
    if settings.gemini_api_key is not None:
        entries += [gemini_model(i) for i in _ids(settings.gemini_model, settings.gemini_models)]
    if settings.openai_base_url:
        entries += [
            openai_model(i, settings.openai_context_tokens)
            for i in _ids(settings.openai_model, settings.openai_models)
        ]
    entries += [demo_model(DEMO_MODEL), demo_model(DEMO_PRO_MODEL)]
    seen: set[str] = set()
    for info in entries:
        if info.id in seen:
            raise CatalogueError(f"model {info.id!r} is configured for two providers")
        seen.add(info.id)
    if settings.pro_models is not None:
        unknown = set(settings.pro_models) - seen
        if unknown:
            raise CatalogueError(f"PRO_MODELS names models not configured: {sorted(unknown)}")
        pro = set(settings.pro_models)
        entries = [_with_tiers(info, PRO_ONLY if info.id in pro else ALL_TIERS) for info in entries]
    default = settings.default_model or _provider_default(settings)
    if default not in seen:
        raise CatalogueError(f"DEFAULT_MODEL {default!r} is not a configured model")
    return ModelCatalogue(tuple(entries), default)


def _ids(first: str, more: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([first, *more]))


def _provider_default(settings: Settings) -> str:
    """AI_PROVIDER's model: what a single-provider deployment has always answered with."""
    choice = settings.ai_provider
    if choice == "auto":
        if settings.gemini_api_key is not None:
            choice = "gemini"
        elif settings.openai_base_url:
            choice = "openai"
        else:
            choice = "demo"
    if choice == "gemini":
        if settings.gemini_api_key is None:
            raise CatalogueError("AI_PROVIDER=gemini needs GEMINI_API_KEY")
        return settings.gemini_model
    if choice == "openai":
        if not settings.openai_base_url:
            raise CatalogueError("AI_PROVIDER=openai needs OPENAI_BASE_URL")
        return settings.openai_model
    return DEMO_MODEL


def _with_tiers(info: ModelInfo, tiers: tuple[PlanName, ...]) -> ModelInfo:
    return ModelInfo(
        info.id, info.provider, info.display_name, info.context_tokens, info.supports, tiers
    )


# Gemini models' capabilities (Google's model pages): all take images and PDFs; 2.0 Flash-Lite
# has no Search grounding; thinking came with 2.5. The larger (Pro) models are for Pro users.
_NO_SEARCH = ("gemini-2.0-flash-lite",)
_THINKING_PREFIXES = ("gemini-2.5", "gemini-3")


def gemini_model(model_id: str) -> ModelInfo:
    supports: list[Capability] = ["images", "pdf"]
    if model_id.startswith(_THINKING_PREFIXES):
        supports.append("thinking")
    if not model_id.startswith(_NO_SEARCH):
        supports.append("search")
    return ModelInfo(
        model_id,
        "gemini",
        _display_name(model_id),
        GEMINI_CONTEXT_TOKENS,
        tuple(supports),
        PRO_ONLY if "-pro" in model_id else ALL_TIERS,
    )


def openai_model(model_id: str, context_tokens: int) -> ModelInfo:
    """An OpenAI-compatible server's model: image content parts; its own thinking and search,
    if any, are not reached through the Chat Completions API the provider speaks."""
    return ModelInfo(model_id, "openai", model_id, context_tokens, ("images",), ALL_TIERS)


def demo_model(model_id: str) -> ModelInfo:
    """`demo` lacks thinking and `demo-pro` is Pro only, so that every rule of a room's options
    (unsupported, Pro only, Pro-only grounding) can be seen without a provider."""
    pro = model_id == DEMO_PRO_MODEL
    supports: tuple[Capability, ...] = (
        ("images", "pdf", "thinking", "search") if pro else ("images", "pdf", "search")
    )
    return ModelInfo(
        model_id,
        "demo",
        "Demo Pro (offline)" if pro else "Demo (offline)",
        DEMO_CONTEXT_TOKENS,
        supports,
        PRO_ONLY if pro else ALL_TIERS,
    )


def _display_name(model_id: str) -> str:
    """`gemini-2.5-flash-lite` -> "Gemini 2.5 Flash Lite"."""
    return " ".join(
        word if word[:1].isdigit() else word.capitalize() for word in model_id.split("-")
    )
