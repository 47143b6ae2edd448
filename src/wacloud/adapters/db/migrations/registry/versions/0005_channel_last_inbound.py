"""channels remember when their last webhook event was stored (channel health)

Revision ID: 0005
Revises: 0004

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wacloud.adapters.db.types import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("channels", sa.Column("last_inbound_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    # batch mode: older SQLite cannot drop a column in place (the table is copied instead).
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("last_inbound_at")
