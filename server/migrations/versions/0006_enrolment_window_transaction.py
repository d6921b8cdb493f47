"""Enrolment windows name the transaction that adapted them: `server_enrolment_window.transaction_id`.

Why: controlled adaptation accepted every window of an approved transaction, and past the
200-window cap the oldest rows went first, so an impostor approved through a step-up could
re-send his windows until the owner's own enrolment was gone. A window now records the
approved transaction it came from (None: plain enrolment); past the cap, adapted windows are
dropped first, and a transaction adapts a modality with at most `ADAPT_MAX_WINDOWS` windows
(`server.services.enrolment`). Existing rows stay None: they count as plain enrolment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column without a default: ALTER TABLE ADD COLUMN on both backends, no table rebuild
    op.add_column('server_enrolment_window', sa.Column('transaction_id', sa.String(length=36), nullable=True))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place
    op.execute("ALTER TABLE server_enrolment_window DROP COLUMN transaction_id")
