"""Decision tokens are spent once: `server_transaction.token_redeemed_at`.

Why: `verify-token` told the bank a token was valid as often as it was asked, for any
user's payment with the same amount and payee. It now checks the token's user and
transaction, and redeeming it marks the transaction, so one approval executes one payment.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column without a default: ALTER TABLE ADD COLUMN on both backends, no table rebuild
    op.add_column('server_transaction', sa.Column('token_redeemed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE server_transaction DROP COLUMN token_redeemed_at")
