"""Applying the Alembic migrations from code (`gemini-backend migrate`, tests, start-up).

A database already at the latest revision is left alone without loading Alembic: its
revisions are read from `alembic_version` and compared with the heads named in the migration
files (`head_revisions`), so a start on an up-to-date schema costs one query, not Alembic's
import and run (about a second of a cold start; bench/README.md).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gemini_backend.config import Settings

if TYPE_CHECKING:
    from alembic.config import Config

_PACKAGE_DIR = Path(__file__).resolve().parent
# The migration files' own declarations (script.py.mako): `revision: str = "0015"` and
# `down_revision: str | None = "0014"` (or None, or a tuple of revisions for a merge).
_REVISION = re.compile(r"^revision(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def _script_location() -> Path:
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parents[1] / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the Alembic migrations folder was not found")


def alembic_config(settings: Settings) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["settings"] = settings
    return config


def head_revisions() -> frozenset[str]:
    """The revisions no migration file builds on (Alembic's heads), read from the files."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_script_location() / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        down = _DOWN_REVISION.search(source)
        if revision is None or down is None:
            raise ValueError(f"{path.name}: no `revision` / `down_revision` declaration")
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    return frozenset(revisions - parents)


async def _current_revisions(settings: Settings) -> frozenset[str]:
    """The database's revisions (empty when it has never been migrated)."""
    from gemini_backend.core.db import create_engine

    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            try:
                rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            except DBAPIError:  # no such table: a new database
                return frozenset()
            return frozenset(row[0] for row in rows)
    finally:
        await engine.dispose()


def is_at_head(settings: Settings) -> bool:
    """Whether the database is at the latest schema (blocking; outside an event loop)."""
    return asyncio.run(_current_revisions(settings)) == head_revisions()


def upgrade_to_head(settings: Settings) -> bool:
    """Bring the database to the latest schema (blocking; run it outside an event loop).
    True when migrations ran, False when it was at the latest revision already."""
    if is_at_head(settings):
        return False
    from alembic import command

    command.upgrade(alembic_config(settings), "head")
    return True
