"""parked items keep the signed webhook and its signature (re-checked on replay)

Revision ID: 0004
Revises: 0003

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    body = sa.UnicodeText().with_variant(mysql.LONGTEXT(), "mysql").with_variant(
        mysql.LONGTEXT(), "mariadb")
    op.add_column("parked", sa.Column("raw_body", body, nullable=True))
    op.add_column("parked", sa.Column("signature", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # batch mode: older SQLite cannot drop a column in place (the table is copied instead).
    with op.batch_alter_table("parked") as batch:
        batch.drop_column("signature")
        batch.drop_column("raw_body")
