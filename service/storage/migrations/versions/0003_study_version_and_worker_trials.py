"""hpo_studies.version (compare-and-set of state changes), hpo_studies.resumed_at,
hpo_workers.trials_trained (a worker that trained a trial did not crash at start)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("hpo_workers") as batch:
        batch.add_column(
            sa.Column("trials_trained", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.drop_column("trials_trained")
    with op.batch_alter_table("hpo_studies") as batch:
        batch.drop_column("resumed_at")
        batch.drop_column("version")
