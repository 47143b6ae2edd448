"""Send groups: one per recipient (its order kept), none shared by mark-as-read sends."""

from __future__ import annotations

from wacloud.adapters.queue.base import lane_of
from wacloud.domain.model import OutboundMessage
from wacloud.stages.collect import send_group


def message(row_id: int, type: str, recipient: str | None) -> OutboundMessage:
    return OutboundMessage(tenant="acme", row_id=row_id, channel_key="106540", recipient=recipient,
                           type=type, content={"message_id": "wamid.X"} if type == "read" else {})


def test_reads_are_not_serialized_per_channel() -> None:
    reads = [send_group(message(i, "read", None)) for i in (1, 2)]
    assert reads[0] != reads[1]
    # ... while they still share the channel's lane (fair turns between numbers).
    assert {lane_of(g) for g in reads} == {"acme/106540"}


def test_messages_to_one_recipient_share_a_group() -> None:
    assert send_group(message(1, "text", "5511")) == send_group(message(2, "text", "5511"))
    assert lane_of(send_group(message(1, "text", "5511"))) == "acme/106540"
