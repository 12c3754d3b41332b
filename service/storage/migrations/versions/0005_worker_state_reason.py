"""hpo_workers.state_reason: why a worker is pending (a queued Slurm job's reason)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.drop_column("state_reason")
