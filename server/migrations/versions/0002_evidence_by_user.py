"""Evidence hashes keyed by (user, hash) without a rowid; drop the redundant transaction-by-user index.

Why: each authorize call writes its windows' hashes. Keyed by the random hash alone, every
window landed on its own leaf page (plus the rowid table and a user index): about a third of
the ~26 pages an authorize call wrote to the log. Keyed by user first, a request's windows
share a page. `ix_server_tx_user` duplicated the prefix of the unique (user_id,
idempotency_key) index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_COLUMNS = "user_id, window_hash, modality, seen_at"


def _create(name: str, pk: list[str], *, rowid: bool) -> None:
    op.create_table(name,
                    sa.Column('user_id', sa.String(length=128), nullable=False),
                    sa.Column('window_hash', sa.String(length=64), nullable=False),
                    sa.Column('modality', sa.String(length=16), nullable=False),
                    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint(*pk, name=f'{name}_pkey'),
                    sqlite_with_rowid=rowid)


def _rebuild(pk: list[str], *, rowid: bool, where: str = "") -> None:
    """Copy the table into one with the new key (SQLite cannot change a primary key in place)."""
    _create('server_evidence_seen_new', pk, rowid=rowid)
    op.execute(f"INSERT INTO server_evidence_seen_new ({_COLUMNS}) SELECT {_COLUMNS} FROM server_evidence_seen e {where}")
    op.drop_table('server_evidence_seen')
    op.rename_table('server_evidence_seen_new', 'server_evidence_seen')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE server_evidence_seen RENAME CONSTRAINT server_evidence_seen_new_pkey "
                   "TO server_evidence_seen_pkey")


def upgrade() -> None:
    _rebuild(['user_id', 'window_hash'], rowid=False)
    with op.batch_alter_table('server_transaction', schema=None) as batch_op:
        batch_op.drop_index('ix_server_tx_user')


def downgrade() -> None:
    with op.batch_alter_table('server_transaction', schema=None) as batch_op:
        batch_op.create_index('ix_server_tx_user', ['user_id'], unique=False)
    # one row per hash again: the same window may now be on record for two users
    _rebuild(['window_hash'], rowid=True, where="WHERE NOT EXISTS (SELECT 1 FROM server_evidence_seen f "
                                               "WHERE f.window_hash = e.window_hash AND f.user_id < e.user_id)")
    with op.batch_alter_table('server_evidence_seen', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_evidence_seen_user_id'), ['user_id'], unique=False)
