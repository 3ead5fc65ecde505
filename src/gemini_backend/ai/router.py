"""GET /models: the catalogue of the configured providers' models (ai/catalogue.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.ai.catalogue import ModelCatalogue, ModelInfo
from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.openapi import AUTH_ERRORS
from gemini_backend.services import services_of

router = APIRouter(tags=["Models"])

MODEL_EXAMPLE: dict[str, Any] = {
    "id": "gemini-2.5-flash",
    "provider": "gemini",
    "display_name": "Gemini 2.5 Flash",
    "context_tokens": 1_048_576,
    "supports": ["images", "pdf", "thinking", "search"],
    "tiers": ["basic", "pro"],
}


class ModelOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": MODEL_EXAMPLE})

    id: str = Field(description="What a chatroom's `model` is set to.")
    provider: Literal["gemini", "openai", "demo"]
    display_name: str
    context_tokens: int = Field(description="The model's context window, in tokens.")
    supports: list[Literal["images", "pdf", "thinking", "search"]] = Field(
        description="`thinking`: a room's `thinking` option; `search`: its `grounding`."
    )
    tiers: list[Literal["basic", "pro"]] = Field(description="The plans that may use it.")

    @classmethod
    def of(cls, info: ModelInfo) -> ModelOut:
        return cls(
            id=info.id,
            provider=info.provider,
            display_name=info.display_name,
            context_tokens=info.context_tokens,
            supports=list(info.supports),
            tiers=list(info.tiers),
        )


class ModelList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "models": [
                    MODEL_EXAMPLE,
                    {
                        **MODEL_EXAMPLE,
                        "id": "gemini-2.5-pro",
                        "display_name": "Gemini 2.5 Pro",
                        "tiers": ["pro"],
                    },
                ],
                "default": "gemini-2.5-flash",
            }
        }
    )

    models: list[ModelOut]
    default: str = Field(description="The model of a chatroom whose `model` is null.")

    @classmethod
    def of(cls, catalogue: ModelCatalogue) -> ModelList:
        return cls(models=[ModelOut.of(m) for m in catalogue.models], default=catalogue.default)


@router.get(
    "/models",
    summary="The models a chatroom may use",
    description=(
        "Every configured provider's models side by side (Gemini, an OpenAI-compatible server, "
        "the offline demo), with what each supports and the plans that may use it. A model or "
        "option outside the caller's plan is 403 `plan_required` when a chatroom is set to it."
    ),
    responses=AUTH_ERRORS,
)
async def list_models(request: Request, user: CurrentUser) -> ModelList:
    return ModelList.of(services_of(request).models.catalogue)
