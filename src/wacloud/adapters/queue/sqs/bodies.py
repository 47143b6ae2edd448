"""Message bodies on SQS: bytes to SQS text and back, and bodies too large for a message.

SQS carries text (XML characters only) of at most 256 KiB per message, attributes included,
and per SendMessageBatch call. A body that is UTF-8 of legal characters goes as is; any other is
base64 (attribute `wacloud.encoding`). A body too large is stored in the media store under
`queue-bodies/<queue>/<uuid>` and the message carries only its key (attribute
`wacloud.body-key`): a receive reads it back, an ack or a discard deletes it.

The attributes this adapter keeps on messages (SQS cannot change a message's attributes, so
each is written when a message is sent: by a producer, a copy, a dead-lettering):
`wacloud.group` the port's group id where SQS's MessageGroupId cannot hold it (standard queues,
dead letters, ids SQS refuses); `wacloud.sent-at` the first send's time, kept by copies;
`wacloud.receives-before` receives counted before a copy was made (`release(count=False)`);
`wacloud.reason`, `wacloud.source`, `wacloud.receives` on dead letters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore

MAX_MESSAGE = 256 * 1024  # SQS's limit per message and per batch call, attributes included
# Bodies up to this size go inline; the rest leaves room for the attributes below.
MAX_INLINE = MAX_MESSAGE - 8 * 1024
BODIES_PREFIX = "queue-bodies"

KEY = "wacloud.body-key"
ENCODING = "wacloud.encoding"
GROUP = "wacloud.group"
SENT_AT = "wacloud.sent-at"
CARRIED = "wacloud.receives-before"
REASON = "wacloud.reason"
SOURCE = "wacloud.source"
RECEIVES = "wacloud.receives"
REASON_MAX = 500  # as much of a reason as a dead letter keeps (the SQLite queue keeps as much)

# Characters SQS accepts in a message body (and attribute values): XML 1.0's.
_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# MessageGroupId and MessageDeduplicationId: 1-128 characters, alphanumerics and punctuation.
_SQS_ID = re.compile(r"[!-~]{1,128}")


class BodyTooLarge(ValueError):
    """A body over SQS's message size with no media store to hold it."""


def attribute(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def attributes_of(message: dict[str, Any]) -> dict[str, str]:
    """A received SQS message's string attributes, by name."""
    return {name: str(value.get("StringValue", ""))
            for name, value in (message.get("MessageAttributes") or {}).items()}


def as_attributes(values: dict[str, str]) -> dict[str, dict[str, str]]:
    # SQS refuses empty attribute values: an empty one is simply not written.
    return {name: attribute(value) for name, value in values.items() if value}


def sqs_id(value: str) -> str:
    """`value` as a MessageGroupId / MessageDeduplicationId: itself when SQS accepts it, else a
    digest of it (the same value always gives the same id)."""
    return value if _SQS_ID.fullmatch(value) else hashlib.sha256(value.encode()).hexdigest()


def entry_size(entry: dict[str, Any]) -> int:
    """What an entry counts towards SQS's size limit: body, attribute names, types, values."""
    size = len(str(entry["MessageBody"]).encode())
    for name, value in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(value["DataType"]) + len(
            str(value.get("StringValue", "")).encode())
    return size


def encode_inline(body: bytes) -> tuple[str, dict[str, str]]:
    """SQS text for `body` and the attributes that say how to read it back."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _ILLEGAL.search(text):
        return text, {}
    return base64.b64encode(body).decode("ascii"), {ENCODING: "base64"}


async def encode(body: bytes, queue_name: str, media_store: MediaStore | None,
                 tmp_dir: Path) -> tuple[str, dict[str, str]]:
    """The message text and attributes for `body`, storing it in the media store when it is
    too large for SQS."""
    text, attrs = encode_inline(body)
    if len(text.encode()) <= MAX_INLINE:
        return text, attrs
    if media_store is None:
        raise BodyTooLarge(
            f"a message of {len(body)} bytes is over SQS's 256 KB limit and the queue broker "
            "has no media store to keep it in (set WACLOUD_MEDIA_URL)")
    key = f"{BODIES_PREFIX}/{queue_name}/{uuid.uuid4().hex}"
    path = tmp_dir / f"queue-body-{uuid.uuid4().hex}"
    await asyncio.to_thread(_write, path, body)
    try:
        await media_store.put_file(key, path, "application/octet-stream")
    finally:
        with contextlib.suppress(FileNotFoundError):  # consumed by put_file when it succeeded
            path.unlink()
    return f"wacloud queue body in the media store: {key}", {KEY: key}


def _write(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


async def decode(message: dict[str, Any], media_store: MediaStore | None) -> bytes:
    """The body of a received SQS message (read from the media store when it points there)."""
    attrs = attributes_of(message)
    key = attrs.get(KEY)
    if key:
        if media_store is None:
            raise BodyTooLarge(f"the message's body is in the media store ({key}) and the queue "
                               "broker has no media store (set WACLOUD_MEDIA_URL)")
        return b"".join([chunk async for chunk in media_store.open(key)])
    text = str(message["Body"])
    if attrs.get(ENCODING) == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def body_key(message: dict[str, Any]) -> str | None:
    """The media key of a message whose body is in the media store."""
    return attributes_of(message).get(KEY) or None


def clip_reason(reason: str) -> str:
    """A reason as a dead letter keeps it: at most REASON_MAX characters SQS accepts."""
    return _ILLEGAL.sub("?", reason[:REASON_MAX])
