"""retention indexes

Revision ID: 0002
Revises: 0001

The retention purge (`wacloud.privacy.lgpd.purge_expired`) deletes by age every hour; without these
it would scan each whole table. They grow at the right-hand end only (rows arrive in time
order), so they cost inserts little. Contact lookups for erasure need no new index: they
match every written form of a phone number (LIKE), which no B-tree index serves, and run
rarely.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_messages_received_at", "messages", "received_at"),
    ("ix_outbound_messages_created_at", "outbound_messages", "created_at"),
    ("ix_status_events_received_at", "status_events", "received_at"),
    ("ix_notices_received_at", "notices", "received_at"),
]


def upgrade() -> None:
    for name, table, column in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, [column], unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
