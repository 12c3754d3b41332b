"""Alembic revisions of the hpo_ tables (version table hpo_alembic_version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

__all__ = ["VERSION_TABLE", "alembic_config", "include_name", "upgrade"]

VERSION_TABLE = "hpo_alembic_version"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate looks at the hpo_ tables only, never at Optuna's."""
    if type_ == "table":
        return name is not None and name.startswith("hpo_")
    return True


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``database_url`` that works without alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the hpo_ tables of ``database_url`` to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)
