"""Initial schema: server and compliance tables (compliance times are naive UTC, see UTCDateTime).

Revision ID: 0001
Revises:
Create Date: 2026-11-21 14:10:12.321686
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('compliance_audit',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('ts', sa.DateTime(), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('compliance_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compliance_audit_subject'), ['subject'], unique=False)
        batch_op.create_index(batch_op.f('ix_compliance_audit_ts'), ['ts'], unique=False)

    op.create_table('compliance_audit_checkpoint',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('compliance_audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('compliance_consent',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('modality', sa.String(length=32), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('policy_version', sa.String(length=32), nullable=False),
    sa.Column('granted_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('compliance_consent', schema=None) as batch_op:
        batch_op.create_index('ix_compliance_consent_user', ['user_id', 'modality', 'purpose'], unique=False)

    op.create_table('server_user',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('locked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('server_device',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('platform', sa.String(length=64), nullable=False),
    sa.Column('attestation', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('server_device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_device_user_id'), ['user_id'], unique=False)

    op.create_table('server_enrolment_window',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('feature_version', sa.String(length=64), nullable=False),
    sa.Column('quality', sa.Float(), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('server_enrolment_window', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_enrolment_window_user_id'), ['user_id'], unique=False)

    op.create_table('server_evidence_seen',
    sa.Column('window_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('window_hash')
    )
    with op.batch_alter_table('server_evidence_seen', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_evidence_seen_user_id'), ['user_id'], unique=False)

    op.create_table('server_security_flag',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('server_security_flag', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_security_flag_user_id'), ['user_id'], unique=False)

    op.create_table('server_template',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('feature_version', sa.String(length=64), nullable=False),
    sa.Column('feature_dim', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('n_windows', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'modality')
    )
    with op.batch_alter_table('server_template', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_template_user_id'), ['user_id'], unique=False)

    op.create_table('server_auth_session',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('risk', sa.Float(), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['server_device.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('server_auth_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_auth_session_user_id'), ['user_id'], unique=False)

    op.create_table('server_nonce',
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('seen_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['server_device.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_id', 'nonce')
    )
    with op.batch_alter_table('server_nonce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_nonce_seen_at'), ['seen_at'], unique=False)

    op.create_table('server_transaction',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('amount', sa.String(length=32), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('payee', sa.String(length=128), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('risk', sa.Float(), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['server_device.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['server_user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'idempotency_key')
    )
    with op.batch_alter_table('server_transaction', schema=None) as batch_op:
        batch_op.create_index('ix_server_tx_user', ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('server_transaction', schema=None) as batch_op:
        batch_op.drop_index('ix_server_tx_user')

    op.drop_table('server_transaction')
    with op.batch_alter_table('server_nonce', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_nonce_seen_at'))

    op.drop_table('server_nonce')
    with op.batch_alter_table('server_auth_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_auth_session_user_id'))

    op.drop_table('server_auth_session')
    with op.batch_alter_table('server_template', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_template_user_id'))

    op.drop_table('server_template')
    with op.batch_alter_table('server_security_flag', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_security_flag_user_id'))

    op.drop_table('server_security_flag')
    with op.batch_alter_table('server_evidence_seen', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_evidence_seen_user_id'))

    op.drop_table('server_evidence_seen')
    with op.batch_alter_table('server_enrolment_window', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_enrolment_window_user_id'))

    op.drop_table('server_enrolment_window')
    with op.batch_alter_table('server_device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_device_user_id'))

    op.drop_table('server_device')
    op.drop_table('server_user')
    with op.batch_alter_table('compliance_consent', schema=None) as batch_op:
        batch_op.drop_index('ix_compliance_consent_user')

    op.drop_table('compliance_consent')
    op.drop_table('compliance_audit_head')
    op.drop_table('compliance_audit_checkpoint')
    with op.batch_alter_table('compliance_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compliance_audit_ts'))
        batch_op.drop_index(batch_op.f('ix_compliance_audit_subject'))

    op.drop_table('compliance_audit')
