"""SendMessageBatch entries: a new message's, and the ones rebuilt from a received message
(a copy that gives a receive back, a dead letter, a redriven letter).

Group ids: a FIFO queue's MessageGroupId is the port's group id (a digest of it when SQS would
refuse it, the id itself then kept in `wacloud.group`); a message without a group gets a group
of its own (`NO_GROUP` + a uuid: no order to keep). Standard queues keep the group id in
`wacloud.group` only. De-duplication ids go to FIFO queues only (standard queues have none).
"""

from __future__ import annotations

import uuid
from typing import Any

from wacloud.adapters.queue.sqs.bodies import (
    CARRIED,
    ENCODING,
    GROUP,
    KEY,
    as_attributes,
    attributes_of,
    sqs_id,
)

MAX_DELAY_S = 900  # SQS's longest DelaySeconds
NO_GROUP = "wacloud-none-"


def new_entry(text: str, attrs: dict[str, str], *, fifo: bool, group_id: str | None,
              dedup_id: str | None = None, delay: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {"MessageBody": text}
    attrs = dict(attrs)
    if fifo:
        if group_id is None:
            entry["MessageGroupId"] = NO_GROUP + uuid.uuid4().hex
        else:
            entry["MessageGroupId"] = sqs_id(group_id)
            if entry["MessageGroupId"] != group_id:
                attrs[GROUP] = group_id
        entry["MessageDeduplicationId"] = sqs_id(dedup_id) if dedup_id else uuid.uuid4().hex
    else:
        if group_id is not None:
            attrs[GROUP] = group_id
        if delay > 0:
            entry["DelaySeconds"] = min(delay, MAX_DELAY_S)
    if attrs:
        entry["MessageAttributes"] = as_attributes(attrs)
    return entry


def group_of(message: dict[str, Any]) -> str | None:
    """The port's group id of a received SQS message."""
    attrs = attributes_of(message)
    if GROUP in attrs:
        return attrs[GROUP]
    group = (message.get("Attributes") or {}).get("MessageGroupId")
    return None if group is None or group.startswith(NO_GROUP) else str(group)


def body_attributes(message: dict[str, Any]) -> dict[str, str]:
    """The attributes that say how to read a message's body (kept by every rebuilt entry)."""
    attrs = attributes_of(message)
    return {name: attrs[name] for name in (KEY, ENCODING) if name in attrs}


def rebuilt(message: dict[str, Any], extra: dict[str, str], *, fifo: bool,
            keep_group: bool = True, delay: int = 0) -> dict[str, Any]:
    """An entry carrying `message`'s body as SQS has it (a large body stays where it is) and
    its group, plus `extra` attributes. `keep_group=False` (dead letters on FIFO queues): a
    group of its own, the group id kept in `wacloud.group` only, so that no letter waits for
    another of its group while being listed."""
    group = group_of(message)
    attrs = {**body_attributes(message), **extra}
    if not keep_group and fifo:
        if group is not None:
            attrs[GROUP] = group
        group = None
    return new_entry(str(message["Body"]), attrs, fifo=fifo, group_id=group, delay=delay)


def carried(message: dict[str, Any]) -> int:
    """Receives counted before this message was a copy (see `release(count=False)`)."""
    value = attributes_of(message).get(CARRIED, "0")
    return int(value) if value.isdigit() else 0
