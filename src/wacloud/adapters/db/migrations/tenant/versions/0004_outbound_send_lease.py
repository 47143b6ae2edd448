"""outbound send lease

Revision ID: 0004
Revises: 0003

A per-row send lease, so that however often the queue delivers a row's send message, one
attempt at a time calls the provider: `send_owner` is a random token of the attempt that holds
(or last held) the row, `send_lease_until` when its hold ends if it dies mid-call. Results of an
attempt only apply while the row is still that attempt's (see `wacloud.adapters.db.tenant.outbox`).
`retry_since` is when the row first failed temporarily: the retry budget
(`WACLOUD_SEND_RETRY_PERIOD_S`) is measured from it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wacloud.adapters.db.types import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_owner", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("send_lease_until", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("retry_since", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_column("retry_since")
        batch_op.drop_column("send_lease_until")
        batch_op.drop_column("send_owner")
