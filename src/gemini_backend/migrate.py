"""Applying the Alembic migrations from code (`gemini-backend migrate`, tests, start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from gemini_backend.config import Settings

_PACKAGE_DIR = Path(__file__).resolve().parent


def _script_location() -> Path:
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parents[1] / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the Alembic migrations folder was not found")


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["settings"] = settings
    return config


def upgrade_to_head(settings: Settings) -> None:
    """Bring the database to the latest schema (blocking; run it outside an event loop)."""
    command.upgrade(alembic_config(settings), "head")
