"""hpo_workers.trials_run: trials a worker finished, to tell crash loops from kills

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.add_column(sa.Column("trials_run", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("hpo_workers") as batch:
        batch.drop_column("trials_run")
