"""outbound conversation index

Revision ID: 0003
Revises: 0002

The send stage checks, before each send, whether an earlier message to the same recipient on
the same channel is still waiting in the outbox (so that it leaves first); this index keeps
that check to a few index entries however large the outbox grows.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_outbound_messages_conversation",
                              ["channel", "recipient", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbound_messages_conversation")
