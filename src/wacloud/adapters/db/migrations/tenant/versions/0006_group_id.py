"""group messages: messages.group_id, outbound_messages.recipient_type

Revision ID: 0006
Revises: 0005

A message said in a WhatsApp group keeps the group's id, so that a reply goes to the group and
not privately to the person who wrote; an outbox row says when its recipient is a group id.
Both columns are nullable: existing rows are direct messages, and a tenant's own systems may
keep inserting rows without them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_id", sa.String(191), nullable=True))
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipient_type", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_column("recipient_type")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("group_id")
