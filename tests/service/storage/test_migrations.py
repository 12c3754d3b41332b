"""Our migrations own the hpo_ tables and never touch Optuna's."""

from __future__ import annotations

import optuna
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.storage.db import make_engine, optuna_storage
from service.storage.migrations import VERSION_TABLE, alembic_config, include_name, upgrade
from service.storage.rows import Base

HPO_TABLES = {"hpo_studies", "hpo_workers", VERSION_TABLE}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _scalar(url: str, sql: str) -> object:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database(database_url: str) -> None:
    upgrade(database_url)
    assert _tables(database_url) == HPO_TABLES
    assert _scalar(database_url, "SELECT version_num FROM hpo_alembic_version") == "0006"
    upgrade(database_url)  # idempotent
    assert _tables(database_url) == HPO_TABLES


def test_upgrade_where_optuna_tables_exist_leaves_them_alone(database_url: str) -> None:
    storage = optuna_storage(database_url)
    study = optuna.create_study(study_name="before", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    optuna_version = _scalar(database_url, "SELECT version_num FROM alembic_version")
    optuna_tables = _tables(database_url)
    storage.engine.dispose()

    upgrade(database_url)

    assert _tables(database_url) == optuna_tables | HPO_TABLES
    assert _scalar(database_url, "SELECT version_num FROM alembic_version") == optuna_version
    reloaded = optuna.load_study(study_name="before", storage=optuna_storage(database_url))
    assert len(reloaded.trials) == 3


def test_optuna_works_on_a_database_we_migrated_first(database_url: str) -> None:
    upgrade(database_url)
    storage = optuna_storage(database_url)
    optuna.create_study(study_name="after", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    assert len(optuna.load_study(study_name="after", storage=storage).trials) == 2


def test_models_match_migrations_and_autogenerate_ignores_optuna(database_url: str) -> None:
    optuna_storage(database_url)  # Optuna's tables exist beside ours
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_name": include_name,
                    "version_table": VERSION_TABLE,
                    "compare_type": True,
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_removes_only_our_tables(database_url: str) -> None:
    optuna_storage(database_url)
    upgrade(database_url)
    command.downgrade(alembic_config(database_url), "base")
    remaining = _tables(database_url)
    assert not (remaining & {"hpo_studies", "hpo_workers"})
    assert {"studies", "trials", "alembic_version"} <= remaining


def test_worker_pids_become_refs_and_back(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO hpo_studies (id, name, task, spec, status, created_at) "
                    "VALUES (1, 'old', 'synthetic', '{}', 'running', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO hpo_workers (id, study_id, launcher, host, pid, pid_start_time,"
                    " gpus, state, log_path, started_at) VALUES "
                    "(1, 1, 'local', 'box', 4242, 917.0, '', 'running', '', CURRENT_TIMESTAMP),"
                    "(2, 1, 'docker', 'gpu1', 77, NULL, '0', 'running', '', CURRENT_TIMESTAMP)"
                )
            )
        command.upgrade(config, "0004")
        with engine.connect() as conn:
            refs = conn.execute(text("SELECT id, ref FROM hpo_workers ORDER BY id")).all()
        assert [tuple(r) for r in refs] == [(1, "box:4242:917"), (2, "gpu1/helios-hpo-old-2")]
        command.downgrade(config, "0003")
        with engine.connect() as conn:
            started = conn.execute(text("SELECT pid_start_time FROM hpo_workers ORDER BY id"))
            assert [value for (value,) in started] == [917.0, None]
    finally:
        engine.dispose()


def test_a_deleted_studys_worker_ids_are_never_given_out_again(database_url: str) -> None:
    # On SQLite the next study's first worker got the id of the deleted study's last one,
    # so that worker's old log URL showed the new study's log.
    config = alembic_config(database_url)
    command.upgrade(config, "0005")
    engine = make_engine(database_url)
    insert_study = text(
        "INSERT INTO hpo_studies (name, task, spec, status, created_at) "
        "VALUES (:name, 'synthetic', '{}', 'running', CURRENT_TIMESTAMP)"
    )
    insert_worker = text(
        "INSERT INTO hpo_workers (study_id, launcher, host, gpus, state, log_path, started_at) "
        "SELECT id, 'local', 'box', '', 'exited', :log, CURRENT_TIMESTAMP FROM hpo_studies "
        "WHERE name = :name"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert_study, {"name": "kept"})
            conn.execute(insert_worker, {"name": "kept", "log": "kept.log"})
            conn.execute(insert_study, {"name": "old"})
            conn.execute(insert_worker, {"name": "old", "log": "old.log"})
        command.upgrade(config, "head")  # the rows stay, ids and all
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT id, log_path FROM hpo_workers ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "kept.log"), (2, "old.log")]
            conn.execute(text("DELETE FROM hpo_studies WHERE name = 'old'"))
            conn.execute(insert_study, {"name": "new"})
            conn.execute(insert_worker, {"name": "new", "log": "new.log"})
            new = conn.scalar(text("SELECT id FROM hpo_workers WHERE log_path = 'new.log'"))
        assert new == 3
    finally:
        engine.dispose()
