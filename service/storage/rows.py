"""ORM tables of the service (prefix hpo_); Optuna owns its own tables."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.spec.models import StudySpec

__all__ = [
    "ENDED_STATUSES",
    "LIVE_STATES",
    "Base",
    "StudyRow",
    "StudyStatus",
    "UTCDateTime",
    "WorkerRow",
    "WorkerState",
    "seconds_since",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StudyStatus(enum.StrEnum):
    CREATING = "creating"  # its row is committed, its Optuna study not yet complete
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # its row is committed, its launcher asked to start it
    PENDING = "pending"  # queued by its launcher (a Slurm job waiting for resources)
    RUNNING = "running"
    EXITED = "exited"  # exit code 0
    FAILED = "failed"  # non-zero exit or killed by a signal
    STOPPED = "stopped"  # stopped by the service
    LOST = "lost"  # gone without an exit code we could read


# A worker in these states may run: it holds its GPUs, and its study cannot be deleted.
LIVE_STATES = (WorkerState.STARTING, WorkerState.PENDING, WorkerState.RUNNING)
ENDED_STATUSES = (StudyStatus.FINISHED, StudyStatus.STOPPED, StudyStatus.FAILED)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A moment stored in UTC and read back with its zone on every database.

    SQLite keeps no zone: without this a row read there is naive while the same
    row read from PostgreSQL is aware, and the API's timestamps would differ.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is None:  # naive means UTC
            return value
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def seconds_since(moment: dt.datetime) -> float:
    """Seconds from ``moment`` (a zone-aware datetime) to now."""
    return (_now() - moment).total_seconds()


class StudyRow(Base):
    __tablename__ = "hpo_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RUNNING)
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=_now, onupdate=_now, server_default=func.now()
    )
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # The last resume: crashes before it are not part of a crash loop.
    resumed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Every UPDATE and DELETE of the row checks and bumps it (StaleDataError when another
    # writer got there first): two state changes never both win.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    workers: Mapped[list[WorkerRow]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="WorkerRow.id"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy's form)

    @property
    def study_spec(self) -> StudySpec:
        """The stored spec, parsed (leniently: see ``StudySpec.from_stored``)."""
        return StudySpec.from_stored(self.spec)

    @study_spec.setter
    def study_spec(self, spec: StudySpec) -> None:
        self.spec = spec.model_dump(mode="json")  # a new dict: the JSON column sees the change

    def set_status(self, status: StudyStatus, reason: str | None) -> None:
        """Change the status; an ended study gets its ``finished_at``."""
        self.status = status
        self.status_reason = reason
        self.finished_at = _now() if status in ENDED_STATUSES else None


class WorkerRow(Base):
    __tablename__ = "hpo_workers"
    # SQLite gives the ids of deleted rows out again without it: a log URL of a deleted
    # study's worker would show another study's log.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 (SQLAlchemy's form)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="CASCADE"), index=True
    )
    launcher: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    # Its launcher's handle (None until it started): only the launcher reads it.
    ref: Mapped[str | None] = mapped_column(Text, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)  # for people, where known
    gpus: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=WorkerState.STARTING)
    # Why it is pending, in its launcher's words (Slurm's reason, e.g. Resources).
    state_reason: Mapped[str | None] = mapped_column(Text, default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    trials_run: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Trials it was seen training (a heartbeat after a trained batch).
    trials_trained: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    log_path: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    study: Mapped[StudyRow] = relationship(back_populates="workers")

    @property
    def live(self) -> bool:
        """It may run (starting or running)."""
        return self.state in LIVE_STATES

    def end(self, state: WorkerState, exit_code: int | None) -> None:
        """Record how it ended."""
        self.state = state
        self.state_reason = None
        self.exit_code = exit_code
        self.ended_at = _now()
