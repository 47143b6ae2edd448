"""channel media hosts (per-channel SSRF allow list)

Revision ID: 0003
Revises: 0002

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("channels", sa.Column("media_hosts", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    # batch mode: older SQLite cannot drop a column in place (the table is copied instead).
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("media_hosts")
