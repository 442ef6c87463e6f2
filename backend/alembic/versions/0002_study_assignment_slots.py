"""Studies: assignment slots and expiry, one response per (assignment, question).

- ``assignments.slot``: which of its item's k annotation slots an assignment holds; ``(item_id, slot)`` is unique,
  so concurrent hand-outs can never give an item more than k live-or-done assignments. Expired assignments and
  gold items (not capped) have ``slot`` NULL (NULLs never collide in a unique constraint).
- ``assignments.expires_at``: a pending assignment not answered by then is released (its slot freed).
- ``responses (assignment_id, question)`` unique: one answer per annotator, item and question.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slot", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint("uq_assignments_item_slot", ["item_id", "slot"])
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_responses_assignment_question", ["assignment_id", "question"])


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_constraint("uq_responses_assignment_question", type_="unique")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_assignments_item_slot", type_="unique")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("slot")
