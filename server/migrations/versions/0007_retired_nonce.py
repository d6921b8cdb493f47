"""Nonces of erased devices stay as digests for the clock-skew window: `server_retired_nonce`.

Why: erasure deleted the device's rows in `server_nonce`. When the app registered again with
the same device id and key, a signed request captured in the last `signature_max_skew_s`
(a self-erasure, an `authorize`) was accepted a second time. Erasure now keeps each nonce's
SHA-256 digest (of device id and nonce: no device or user id is stored) with its time, and a
device registered less than twice the skew window ago is refused a request whose digest is
there. The nonce purge removes them with the nonces. `server_device.created_at` already exists.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('server_retired_nonce',
                    sa.Column('digest', sa.String(length=64), nullable=False),
                    sa.Column('seen_at', sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint('digest'))
    with op.batch_alter_table('server_retired_nonce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_retired_nonce_seen_at'), ['seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('server_retired_nonce', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_retired_nonce_seen_at'))
    op.drop_table('server_retired_nonce')
