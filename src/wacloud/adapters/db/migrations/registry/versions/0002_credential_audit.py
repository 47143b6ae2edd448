"""credential audit and service keys

Revision ID: 0002
Revises: 0001

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import wacloud.adapters.db.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def key_string() -> sa.types.TypeEngine[str]:
    return sa.String(length=191).with_variant(
        mysql.VARCHAR(collation="utf8mb4_bin", length=191), "mariadb").with_variant(
        mysql.VARCHAR(collation="utf8mb4_bin", length=191), "mysql")


def upgrade() -> None:
    op.create_table(
        "credential_audit",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", wacloud.adapters.db.types.UtcDateTime(), nullable=False),
        sa.Column("key_id", ID, nullable=True),
        sa.Column("key_prefix", sa.String(length=16), nullable=True),
        sa.Column("key_label", sa.Unicode(length=191), nullable=True),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("provider", sa.String(length=16), nullable=True),
        sa.Column("lookup_id", key_string(), nullable=True),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("channel_key", key_string(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credential_audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credential_audit_at"), ["at"], unique=False)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("is_service", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("is_service")
    with op.batch_alter_table("credential_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credential_audit_at"))
    op.drop_table("credential_audit")
