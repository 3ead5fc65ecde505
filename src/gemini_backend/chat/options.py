"""A room's model and generation options: the rules when a user sets them (the model exists, it
supports the option, the user's plan allows it), and what a reply is given.

A room set by a Pro user keeps its Pro model and grounding when the user goes back to Basic:
nothing is rewritten, and renewing brings them back. While the owner is Basic, the room's
replies come from the default model, without grounding (`messages.model` says which model
answered); sending is never refused for it, since the tier can change without any request
(a past-due grace period ending)."""

from __future__ import annotations

from dataclasses import dataclass

from gemini_backend.ai.base import GenerationOptions
from gemini_backend.ai.catalogue import ModelCatalogue, ModelInfo
from gemini_backend.core.errors import AppError, ValidationFailed
from gemini_backend.users.tier import Tier

MAX_THINKING_BUDGET = 32768  # Gemini 2.5 Pro's largest thinking budget


class UnknownModel(ValidationFailed):
    code = "unknown_model"
    detail = "No such model; GET /models lists them."


class UnsupportedOption(ValidationFailed):
    code = "unsupported_option"
    detail = "The model does not support this option."


class PlanRequired(AppError):
    status_code = 403
    code = "plan_required"
    detail = "This model or option needs the Pro plan."


@dataclass(frozen=True, slots=True)
class RoomOptions:
    model: str | None
    temperature: float | None
    thinking: str | int | None
    grounding: bool


def thinking_column(value: str | int | None) -> str | None:
    """The stored form of `thinking`: a level, or a budget as digits."""
    return None if value is None else str(value)


def thinking_value(column: str | None) -> str | int | None:
    if column is None:
        return None
    return int(column) if column.isdigit() else column


def _thinks(thinking: str | int | None) -> bool:
    return thinking is not None and thinking != "off"


def check_room_options(
    catalogue: ModelCatalogue, tier: Tier, options: RoomOptions, changed: set[str]
) -> None:
    """The room's options as they would be, checked against their model (422 unknown_model,
    422 unsupported_option) and, for those this request sets, the caller's plan (403
    plan_required: Basic may not pick a Pro model nor turn grounding on)."""
    info = _model(catalogue, options.model)
    if _thinks(options.thinking) and not info.can("thinking"):
        raise UnsupportedOption(f"{info.id} does not support thinking; send thinking: null.")
    if options.grounding and not info.can("search"):
        raise UnsupportedOption(f"{info.id} does not support grounding (search).")
    if "model" in changed and options.model is not None and tier not in info.tiers:
        raise PlanRequired(f"{info.id} needs the Pro plan.")
    if "grounding" in changed and options.grounding and tier != "pro":
        raise PlanRequired("Grounding with Google Search needs the Pro plan.")


def _model(catalogue: ModelCatalogue, model_id: str | None) -> ModelInfo:
    if model_id is None:
        return catalogue.default_model
    info = catalogue.get(model_id)
    if info is None:
        raise UnknownModel(f"No model {model_id!r}; GET /models lists them.")
    return info


def reply_settings(
    catalogue: ModelCatalogue, tier: Tier, options: RoomOptions
) -> tuple[ModelInfo, GenerationOptions]:
    """The model and options a reply in the room gets: the room's, or the default model when
    the room's is no longer configured or no longer the owner's plan's; an option the model
    or the plan does not allow is left out."""
    info = catalogue.get(options.model) if options.model is not None else None
    if info is None or tier not in info.tiers:
        info = catalogue.default_model
    thinking = options.thinking if info.can("thinking") else None
    grounding = options.grounding and tier == "pro" and info.can("search")
    return info, GenerationOptions(options.temperature, thinking, grounding)
