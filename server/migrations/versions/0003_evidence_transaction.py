"""Evidence hashes name the authorize call that carried them (controlled template adaptation).

Why: a template may adapt to evidence only once an independent factor confirmed it (the
transaction was approved, or its step-up passed). The device re-sends those windows for
enrolment with the transaction's id; the server accepts exactly the windows that call
carried, once each (`server.services.enrolment`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column without a default: ALTER TABLE ADD COLUMN on both backends, no table rebuild
    op.add_column('server_evidence_seen', sa.Column('transaction_id', sa.String(length=36), nullable=True))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place (a batch rebuild would lose WITHOUT ROWID)
    op.execute("ALTER TABLE server_evidence_seen DROP COLUMN transaction_id")
