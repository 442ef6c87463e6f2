"""Multi-rank training runs.

- ``runs.nproc``: how many ranks (processes, one GPU each) a run trains on; NULL: the worker's default
  (``MOTIONLAB_WORKER_GPUS``, else its CUDA devices, one on the CPU), written into the row when a worker starts it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nproc", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("nproc")
