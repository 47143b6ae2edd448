"""Receive: parse EVERY message, status and notice of a webhook, check that each Meta event is
signed by its own channel's app secret, and give media one quick try.

A body that cannot be parsed is parked with the reason (never dropped). Meta signs a body, not
an entry, and one body may name several numbers: an event is kept only when the body's
`X-Hub-Signature-256` verifies with the app secret of the channel it routes to (or with the
global `WACLOUD_META_APP_SECRET`); others are refused, counted in
`wacloud_inbound_refused_total` and logged, never stored, so a tenant with its own Meta app
cannot write into another tenant's database. Events of a number no tenant has yet are parked
with the signed body and its signature, to be checked again when they are replayed. Media that
does not copy at its first try leaves with `status = pending`; the write stage queues its
retry, so a message is never held back long by its media.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Event,
    InboundMessage,
    MediaStatus,
    PayloadError,
    event_from_dict,
)
from wacloud.media.copier import MediaCopier, MediaCopyError
from wacloud.observability.metrics import INBOUND_REFUSED, INGEST_LAG
from wacloud.observability.tracing import log_context, new_trace_id
from wacloud.providers import port
from wacloud.providers.base import WebhookAuth
from wacloud.providers.jsonload import load_json
from wacloud.stages.envelopes import (
    INBOUND_EVENTS,
    Output,
    Park,
    RawWebhook,
    dumps,
    envelope_text,
    signed_webhook,
)

log = logging.getLogger(__name__)

@dataclass(slots=True)
class ReceiveContext:
    broker: CredentialsBroker
    copier: MediaCopier
    park: Park
    first_try_timeout: float = 10.0


def parse(raw: RawWebhook) -> list[Event]:
    if raw.kind == "events":
        data = json.loads(raw.body)
        items = data["events"] if isinstance(data, dict) else data
        return [event_from_dict(item) for item in items]
    payload: Any = load_json(raw.body)
    if not isinstance(payload, dict):
        raise PayloadError("body is not a JSON object")
    return port(raw.provider).parse_webhook(payload, raw.channel_key)


def check_entries(events: list[Event], webhook: bytes, signature: str | None,
                  broker: CredentialsBroker
                  ) -> tuple[list[Event], list[Event], list[Event]]:
    """(authentic, refused, unroutable) events of a signed-body provider (one webhook's, so
    one provider's): each is authentic when `signature` verifies `webhook` with the app secret
    of the channel it routes to (or the global one). One HMAC per distinct secret, so one app
    for every tenant costs one per body."""
    if not events:
        return [], [], []
    provider = port(events[0].provider)
    authentic: list[Event] = []
    refused: list[Event] = []
    unroutable: list[Event] = []
    verdicts: dict[tuple[str, ...], bool] = {}
    for event in events:
        channel = broker.channel(event.provider, event.channel_key, event.account_key)
        if channel is None:
            unroutable.append(event)
            continue
        secrets = tuple(s for s in (channel.app_secret, broker.global_meta_app_secret) if s)
        verdict = verdicts.get(secrets)
        if verdict is None:
            verdict = verdicts[secrets] = provider.verify_signature(webhook, signature, secrets)
        (authentic if verdict else refused).append(event)
    return authentic, refused, unroutable


def refuse(events: list[Event], reason: str, why: str) -> None:
    """Count and log refused events by channel; never their content, never a secret."""
    by_channel: dict[str, int] = defaultdict(int)
    for event in events:
        by_channel[event.channel_key] += 1
    provider = events[0].provider.value if events else ""
    for channel_key, count in by_channel.items():
        INBOUND_REFUSED.labels(provider, reason).inc(count)
        log.warning("refused %d %s event(s) for channel %r: %s", count, provider, channel_key,
                    why)


async def authenticate(raw: RawWebhook, events: list[Event], ctx: ReceiveContext
                       ) -> list[Event]:
    """The events of `raw` that may be stored: see the module docstring. Unroutable events of
    a signed-body provider (Meta) are parked here with their proof; the rest go on."""
    if not events or port(raw.provider).webhook_auth is not WebhookAuth.SIGNED_BODY:
        return events  # Whapi and Chakra: the channel's secret in the URL named the channel
    if raw.legacy and raw.kind == "webhook":
        return events  # queued by a version that checked the whole body at ingest
    webhook = signed_webhook(raw)
    if webhook is None or not raw.signature:
        if raw.kind == "events" and not raw.replay:
            return events  # a queued batch rewritten by an erasure: checked when it was split
        refuse(events, "unverifiable" if raw.kind == "events" else "no_signature",
               "no signed webhook to check it against")
        return []
    authentic, refused, unroutable = check_entries(events, webhook, raw.signature, ctx.broker)
    # A channel added a moment ago may not be in our snapshot yet: look again before parking
    # (whatever `refresh` says: False also when another task renewed it since our look).
    if unroutable:
        await asyncio.to_thread(ctx.broker.refresh)
        more, more_refused, unroutable = check_entries(unroutable, webhook, raw.signature,
                                                       ctx.broker)
        authentic += more
        refused += more_refused
    if refused:
        refuse(refused, "signature",
               "the body's signature does not verify with that channel's app secret")
    groups: dict[str, list[Event]] = defaultdict(list)
    for event in unroutable:
        groups[describe(event)].append(event)
    for description, group in groups.items():
        await ctx.park(stage="write", reason=f"no tenant for {description}",
                       payload=dumps([e.to_dict() for e in group]).decode(),
                       provider=raw.provider, channel_key=group[0].channel_key,
                       raw_body=envelope_text(webhook), signature=raw.signature)
    return authentic


def describe(event: Event) -> str:
    ids = f"{event.provider.value} channel {event.channel_key!r}"
    if event.account_key:
        ids += f" (account {event.account_key!r})"
    return ids


async def first_media_try(message: InboundMessage, ctx: ReceiveContext) -> None:
    media = message.media
    if media is None or media.status is MediaStatus.STORED:
        return
    channel = ctx.broker.channel(message.provider, message.channel_key, message.account_key)
    if channel is None:
        media.error = "no channel to fetch media with yet"
        return
    try:
        stored = await ctx.copier.copy(channel, media, timeout=ctx.first_try_timeout)
    except MediaCopyError as exc:
        media.status = MediaStatus.PENDING if exc.temporary else MediaStatus.FAILED
        media.error = exc.reason
        return
    except Exception as exc:  # an unexpected bug in one file must not hold the message
        log.exception("media copy crashed")
        media.status = MediaStatus.PENDING
        media.error = f"media copy crashed: {type(exc).__name__}"
        return
    message.media = stored


async def receive_events(data: bytes, ctx: ReceiveContext, *, first_media: bool = True,
                         raw: RawWebhook | None = None) -> list[Event]:
    """Every event of one queued webhook (`raw`: `data` already decoded), media given its
    first try (unless the caller does that itself); [] if the webhook was parked."""
    raw = RawWebhook.decode(data) if raw is None else raw
    try:
        events = parse(raw)
    except (PayloadError, ValueError, KeyError, TypeError) as exc:
        await ctx.park(stage="receive", reason=f"cannot parse {raw.provider} webhook: {exc}",
                       payload=envelope_text(data), provider=raw.provider,
                       channel_key=raw.channel_key)
        return []
    events = await authenticate(raw, events, ctx)
    with_media = [e for e in events if isinstance(e, InboundMessage) and e.media is not None]
    if first_media and with_media:
        await asyncio.gather(*(first_media_try(m, ctx) for m in with_media))
    return events


def taken(raw: RawWebhook) -> str:
    """The receive stage took `raw`: count how long it waited; its trace id (one made now for
    a header written before trace ids were)."""
    if raw.kind == "webhook" and not raw.replay:
        INGEST_LAG.labels(raw.provider).observe(max(time.time() - raw.received_at, 0.0))
    return raw.trace or new_trace_id()


async def receive(data: bytes, ctx: ReceiveContext) -> list[Output]:
    raw = RawWebhook.decode(data)
    trace = taken(raw)
    with log_context(trace_id=trace):
        events = await receive_events(data, ctx, raw=raw)
    if not events:
        return []
    body = dumps({"received_at": raw.received_at, "trace": trace,
                  "events": [e.to_dict() for e in events]})
    return [Output(INBOUND_EVENTS, OutgoingMessage(body))]
