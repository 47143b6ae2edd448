"""SQS event records (what Lambda's event source mapping hands a function) as the queue
port's messages, and which of the port's queues a record comes from."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

from wacloud.adapters.queue.base import ReceivedMessage


def received_message(record: Mapping[str, Any]) -> ReceivedMessage:
    """An SQS event record as the queue port's `ReceivedMessage`."""
    attributes = record.get("attributes") or {}
    sent_ms = attributes.get("SentTimestamp")
    return ReceivedMessage(
        body=str(record.get("body") or "").encode(),
        receipt=str(record["receiptHandle"]),
        receive_count=int(attributes.get("ApproximateReceiveCount") or 1),
        message_id=str(record["messageId"]),
        group_id=attributes.get("MessageGroupId"),
        sent_at=int(sent_ms) / 1000.0 if sent_ms else 0.0,
        attributes=message_attributes(record.get("messageAttributes") or {}))


def sqs_message(record: Mapping[str, Any]) -> dict[str, Any]:
    """An SQS event record in the shape of an SQS ReceiveMessage answer's message."""
    attributes: dict[str, dict[str, Any]] = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        if not isinstance(value, Mapping):
            continue
        converted: dict[str, Any] = {"DataType": value.get("dataType", "String")}
        if value.get("stringValue") is not None:
            converted["StringValue"] = value["stringValue"]
        if value.get("binaryValue") is not None:
            converted["BinaryValue"] = base64.b64decode(value["binaryValue"])
        attributes[str(name)] = converted
    return {"MessageId": record["messageId"], "ReceiptHandle": record["receiptHandle"],
            "Body": record.get("body") or "", "MD5OfBody": record.get("md5OfBody"),
            "Attributes": dict(record.get("attributes") or {}),
            "MessageAttributes": attributes}


def message_attributes(attributes: Mapping[str, Any]) -> dict[str, str]:
    """SQS message attributes (`{"name": {"stringValue": ..., "dataType": ...}}`) as text;
    binary ones stay base64, as the event carries them."""
    found: dict[str, str] = {}
    for name, value in attributes.items():
        if not isinstance(value, Mapping):
            continue
        text = value.get("stringValue")
        if text is None:
            binary = value.get("binaryValue")
            text = (base64.b64encode(binary).decode() if isinstance(binary, bytes)
                    else binary)
        if isinstance(text, str):
            found[str(name)] = text
    return found


def _folded(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def queue_of(arn: str | None, names: Iterable[str]) -> str | None:
    """Which of `names` (port queue names, `inbound.raw`) the SQS queue of `arn` is, whatever
    prefix and spelling the queue adapter gave it (`wacloud-inbound-raw`,
    `prod_outbound_send.fifo`): the longest name its own name ends with, letters and digits
    only."""
    if not arn:
        return None
    sqs_name = _folded(arn.rsplit(":", 1)[-1].removesuffix(".fifo"))
    matches = [name for name in names if sqs_name.endswith(_folded(name))]
    return max(matches, key=len) if matches else None
