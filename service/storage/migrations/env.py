"""Alembic environment: only the hpo_ tables; Optuna's tables are never touched."""

from __future__ import annotations

from typing import Any

from alembic import context

from service.settings import get_settings
from service.storage.db import make_engine, normalize_url
from service.storage.migrations import VERSION_TABLE, include_name
from service.storage.rows import Base

config = context.config
url = config.attributes.get("database_url") or get_settings().database_url


def _options(sqlite: bool) -> dict[str, Any]:
    return {
        "target_metadata": Base.metadata,
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "compare_type": True,
        "render_as_batch": sqlite,
    }


def run_offline() -> None:
    parsed = normalize_url(url)
    context.configure(
        url=parsed.render_as_string(hide_password=False),
        literal_binds=True,
        **_options(parsed.get_backend_name() == "sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, **_options(engine.url.get_backend_name() == "sqlite")
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
