"""What travels on each queue, and the results stages hand back to whoever hosts them.

`inbound.raw` carries a one-line JSON header, a newline, then the webhook body byte for byte
(the bytes the signature was checked over). The header keeps Meta's `X-Hub-Signature-256`, so
the worker can check each entry against the app secret of the channel it routes to, and the
webhook's trace id (`trace`, absent from headers written before it existed). The other queues
carry JSON. Also here: how a parked envelope is kept as text (`envelope_text`,
`envelope_bytes`), the body of an "events" envelope and the signed webhook it keeps, and
`Park`, the callable stages park what they cannot process with.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.domain.model import Event, InboundMessage

INBOUND_RAW = "inbound.raw"
INBOUND_EVENTS = "inbound.events"
INBOUND_MEDIA = "inbound.media"
OUTBOUND_SEND = "outbound.send"
OUTBOUND_SEND_DEAD = "outbound.send.dlq"
OUTBOUND_RESULTS = "outbound.results"
# A media job's flags: the write stage queued it right after committing the message's row;
# an operator's refetch copies the media again even where it is stored.
JUST_STORED = "just_stored"
FORCE = "force"

# Parks what a stage cannot process (`Registry.park`'s keyword arguments): never dropped.
Park = Callable[..., Awaitable[int]]


@dataclass(slots=True)
class Output:
    queue: str
    message: OutgoingMessage


class RetryLater(Exception):
    """Raised by a stage: forward `outputs` (e.g. a note of the error), then release the input
    message to be tried again after `delay` seconds."""

    def __init__(self, reason: str, delay: float, outputs: list[Output] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.outputs = outputs or []


@dataclass(slots=True)
class RawWebhook:
    provider: str
    channel_key: str | None
    received_at: float
    body: bytes
    kind: str = "webhook"  # or "events": a replayed list of already-parsed events
    # Meta's `X-Hub-Signature-256` over `body` (or, for "events", over the webhook they came
    # from, which the body then carries; see `receive.parse_signed`).
    signature: str | None = None
    # Sent by `parked replay`: Meta events that bring no signed webhook are refused.
    replay: bool = False
    # Header v1 (before signatures were kept): a Meta webhook checked whole at ingest.
    legacy: bool = False
    # Follows the webhook's events into the log (see `wacloud.observability.tracing`); hex digits
    # only.
    trace: str | None = None

    def encode(self) -> bytes:
        # The same bytes as json.dumps of the header dict, built without it: this runs for
        # every webhook before it is acknowledged.
        key = "null" if self.channel_key is None else _quoted(self.channel_key)
        signature = "null" if self.signature is None else json.dumps(self.signature)
        replay = ',"replay":true' if self.replay else ""
        trace = ""
        if self.trace is not None:  # ours are hex: no escaping, and no cache entry each
            quoted = f'"{self.trace}"' if self.trace.isalnum() else json.dumps(self.trace)
            trace = f',"trace":{quoted}'
        header = (f'{{"v":2,"provider":{_quoted(self.provider)},"channel_key":{key},'
                  f'"received_at":{self.received_at!r},"kind":{_quoted(self.kind)},'
                  f'"signature":{signature}{replay}{trace}}}')
        return header.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> RawWebhook:
        header_bytes, _, body = data.partition(b"\n")
        header = json.loads(header_bytes)
        signature = header.get("signature")
        trace = header.get("trace")
        return cls(provider=header["provider"], channel_key=header.get("channel_key"),
                   received_at=float(header.get("received_at") or time.time()), body=body,
                   kind=header.get("kind", "webhook"),
                   signature=signature if isinstance(signature, str) else None,
                   replay=header.get("replay") is True, legacy="signature" not in header,
                   trace=trace if isinstance(trace, str) else None)


@functools.lru_cache(maxsize=4096)
def _quoted(text: str) -> str:
    """`json.dumps(text)`, remembered for the few strings headers repeat."""
    return json.dumps(text)


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def media_job(tenant: str, message: InboundMessage, *, just_stored: bool = False,
              force: bool = False) -> OutgoingMessage:
    """An `inbound.media` job (read by `stages.media.fetch_media`): copy `message`'s media.
    Without the raw payload: the row keeps it."""
    fields = message.to_dict()
    fields["raw"] = {}
    job: dict[str, Any] = {"tenant": tenant, "message": fields}
    if just_stored:
        job[JUST_STORED] = True
    if force:
        job[FORCE] = True
    return OutgoingMessage(dumps(job))


def envelope_text(data: bytes) -> str:
    """A parked raw envelope as text an operator can read, lossless for any bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def envelope_bytes(text: str) -> bytes:
    if text.startswith("base64:"):
        return base64.b64decode(text[len("base64:"):])
    return text.encode("utf-8")


def events_body(events: list[Event], webhook: bytes | None) -> bytes:
    """The body of an "events" envelope; with the signed webhook they came from, when kept."""
    items = [e.to_dict() for e in events]
    if webhook is None:
        return dumps(items)
    return dumps({"events": items, "webhook": envelope_text(webhook)})


def signed_webhook(raw: RawWebhook) -> bytes | None:
    """The bytes `raw.signature` covers: the body of a webhook, or the webhook an "events"
    envelope (a parked replay) kept beside its events."""
    if raw.kind != "events":
        return raw.body
    data = json.loads(raw.body)
    webhook = data.get("webhook") if isinstance(data, dict) else None
    return envelope_bytes(webhook) if isinstance(webhook, str) else None
