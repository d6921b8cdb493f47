"""Room for step-up statuses, and an enrolment window per user.

Why:
- `server_transaction.status` was VARCHAR(16), but a completed step-up stores
  "approved_after_step_up" (22 characters). SQLite ignores the length; PostgreSQL refused
  the write, so no step-up could be completed there.
- `server_user.enrolment_open`: plain enrolment (windows without a confirming transaction)
  is accepted only until the user's first authorize call once a template exists, or after
  the bank reopens it. Users who already have a template and transactions start closed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch: a plain ALTER on PostgreSQL, a table copy on SQLite (which cannot change a column's type)
    with op.batch_alter_table('server_transaction') as batch:
        batch.alter_column('status', type_=sa.String(length=32), existing_type=sa.String(length=16),
                           existing_nullable=False)
    op.add_column('server_user', sa.Column('enrolment_open', sa.Boolean(), nullable=False, server_default=sa.true()))
    op.execute("UPDATE server_user SET enrolment_open = false "
               "WHERE id IN (SELECT DISTINCT user_id FROM server_transaction) "
               "AND id IN (SELECT DISTINCT user_id FROM server_template)")


def downgrade() -> None:
    op.execute("ALTER TABLE server_user DROP COLUMN enrolment_open")
    # the old column cannot hold the step-up statuses: their outcome stays in `outcome` and `response`
    op.execute("UPDATE server_transaction SET status = 'approved' WHERE status = 'approved_after_step_up'")
    op.execute("UPDATE server_transaction SET status = 'denied' WHERE status = 'denied_after_step_up'")
    with op.batch_alter_table('server_transaction') as batch:
        batch.alter_column('status', type_=sa.String(length=16), existing_type=sa.String(length=32),
                           existing_nullable=False)
