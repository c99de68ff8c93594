"""Schema management: `sluice db upgrade`, and the start-up check that refuses a stale schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from sluice.connections import engine as default_engine
from sluice.errors import PendingMigrations

__all__ = ["upgrade", "head_revision", "current_revision", "check_schema"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(eng: Engine | None = None, revision: str = "head") -> None:
    """Bring the schema up to `revision` (default: the latest)."""
    eng = eng or default_engine()
    cfg = _config()
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision() -> str:
    """The newest revision the code knows."""
    return str(ScriptDirectory.from_config(_config()).get_current_head())


def current_revision(eng: Engine | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    eng = eng or default_engine()
    with eng.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(eng: Engine | None = None) -> None:
    """Raise PendingMigrations when the database is behind the code."""
    current, head = current_revision(eng), head_revision()
    if current != head:
        raise PendingMigrations(
            f"the database schema is at {current or 'no revision'} but the code needs {head}: "
            "run `sluice db upgrade`")
