"""outbound idempotency, validity and queue order

Revision ID: 0005
Revises: 0004

- `idempotency_key` (the tenant API's `Idempotency-Key` header) with `request_hash` (of the
  body first sent with it): a unique index makes concurrent retries of one POST race-safe, so
  a client that retries gets the first row back instead of a second send. NULLs are distinct
  in a unique index on SQLite, PostgreSQL and MySQL/MariaDB; SQL Server needs the filter.
- `expires_at`: the message's validity (`ttl_s` / `expires_at` in the API); a row still
  unsent when it passes fails as `expired`.
- `queued_attempts`: `attempts` as it was when the row was last queued. While the two are
  equal the row's queue message has not reached the send stage yet, so a later message to the
  same recipient must wait for it (two collectors may queue a recipient's rows out of order).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import wacloud.adapters.db.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ux_outbound_messages_idempotency_key"


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "idempotency_key",
            sa.String(length=191).with_variant(
                mysql.VARCHAR(length=191, collation="utf8mb4_bin"), "mysql", "mariadb"),
            nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("expires_at", wacloud.adapters.db.types.UtcDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("queued_attempts", sa.Integer(), nullable=True))
        batch_op.create_index(INDEX, ["idempotency_key"], unique=True,
                              mssql_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.drop_column("queued_attempts")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
