"""One provider object per model of the catalogue, built once per process (services.py) and
closed at shutdown: the reply generator asks it for the provider of a room's model."""

from __future__ import annotations

import structlog

from gemini_backend.ai.base import Provider
from gemini_backend.ai.catalogue import ModelCatalogue, build_catalogue
from gemini_backend.ai.factory import create_provider
from gemini_backend.config import Settings

log = structlog.get_logger(__name__)


class ProviderRegistry:
    def __init__(self, catalogue: ModelCatalogue, providers: dict[str, Provider]) -> None:
        self.catalogue = catalogue
        self._providers = providers

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        catalogue = build_catalogue(settings)
        return cls(
            catalogue,
            {info.id: create_provider(settings, info) for info in catalogue.models},
        )

    @property
    def default_provider(self) -> Provider:
        return self._providers[self.catalogue.default]

    def provider(self, model_id: str) -> Provider | None:
        return self._providers.get(model_id)

    async def aclose(self) -> None:
        """Release every SDK client's pooled connections (each provider owns its own)."""
        for provider in self._providers.values():
            close = getattr(provider, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:  # one client's failure must not leave the others open
                log.exception("provider_close_failed", model=provider.model)
