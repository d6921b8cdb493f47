"""When a continuous session's evidence last counted: `server_auth_session.last_scored_at`.

Why: the retention purge of templates unused for `template_inactive_days` counted any session
touched in that time (`updated_at`) as use, so a session opened now and then, never scored,
kept a person's templates for ever. Now only a session whose evidence counted does. Existing
sessions that scored at some time (any status but `pending`) take their `updated_at`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('server_auth_session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_scored_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE server_auth_session SET last_scored_at = updated_at WHERE status <> 'pending'")


def downgrade() -> None:
    with op.batch_alter_table('server_auth_session', schema=None) as batch_op:
        batch_op.drop_column('last_scored_at')
