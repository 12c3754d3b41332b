"""hpo_workers.ref: an opaque handle of its launcher (was pid and pid_start_time)

Local workers' refs are ``host:pid:start time``; Docker workers' ``host/container``
(the container's name, which the engine resolves like its id).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_workers = sa.table(
    "hpo_workers",
    sa.column("id", sa.Integer),
    sa.column("study_id", sa.Integer),
    sa.column("launcher", sa.String),
    sa.column("host", sa.String),
    sa.column("pid", sa.Integer),
    sa.column("pid_start_time", sa.Float),
    sa.column("ref", sa.Text),
)
_studies = sa.table("hpo_studies", sa.column("id", sa.Integer), sa.column("name", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.add_column(sa.Column("ref", sa.Text(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            _workers.c.id,
            _workers.c.launcher,
            _workers.c.host,
            _workers.c.pid,
            _workers.c.pid_start_time,
            _studies.c.name,
        ).join(_studies, _studies.c.id == _workers.c.study_id)
    ).all()
    for worker_id, launcher, host, pid, started, study in rows:
        if launcher == "docker":
            ref = f"{host}/helios-hpo-{study}-{worker_id}"
        elif pid is not None and started is not None:
            ref = f"{host}:{pid}:{int(started)}"
        else:
            continue
        conn.execute(sa.update(_workers).where(_workers.c.id == worker_id).values(ref=ref))
    with op.batch_alter_table("hpo_workers") as batch:
        batch.drop_column("pid_start_time")


def downgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.add_column(sa.Column("pid_start_time", sa.Float(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_workers.c.id, _workers.c.ref).where(_workers.c.launcher == "local")
    ).all()
    for worker_id, ref in rows:
        started = ref.rsplit(":", 1)[1] if ref else "None"
        if started != "None":
            conn.execute(
                sa.update(_workers)
                .where(_workers.c.id == worker_id)
                .values(pid_start_time=float(started))
            )
    with op.batch_alter_table("hpo_workers") as batch:
        batch.drop_column("ref")
