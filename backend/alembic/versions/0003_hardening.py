"""Cancellable running generations, registered dataset roots, served-video records of study assignments.

- ``jobs.cancel_requested``: set by ``POST /v1/generations/{id}/cancel`` on a running generation; it stops at its
  next sampling step.
- ``datasets``: training-data directories an admin registered (``POST /v1/datasets``); a run config over the API
  names one in ``data.root`` instead of a server path.
- ``assignments.served``: per side, the bytes of the video the server sent to the assignment and when they reached
  the whole file (the server-side half of the full-watch check).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_T = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("served", JSON_T, nullable=True))
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("datasets")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_column("served")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested")
