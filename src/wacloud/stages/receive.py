"""Receive: parse EVERY message, status and notice of a webhook, and give media one quick try.

A body that cannot be parsed is parked with the reason (never dropped). Media that does not
copy at its first try leaves with `status = pending`; the write stage queues its retry, so a
message is never held back long by its media.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials import CredentialsBroker
from wacloud.media_copier import MediaCopier, MediaCopyError
from wacloud.model import (
    Event,
    InboundMessage,
    MediaStatus,
    PayloadError,
    Provider,
    event_from_dict,
)
from wacloud.providers import chakra, meta, whapi
from wacloud.stages.envelopes import INBOUND_EVENTS, Output, RawWebhook, dumps

log = logging.getLogger(__name__)

Park = Callable[..., Awaitable[int]]


@dataclass(slots=True)
class ReceiveContext:
    broker: CredentialsBroker
    copier: MediaCopier
    park: Park
    first_try_timeout: float = 10.0


def parse(raw: RawWebhook) -> list[Event]:
    if raw.kind == "events":
        return [event_from_dict(item) for item in json.loads(raw.body)]
    try:
        payload: Any = json.loads(raw.body)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not JSON ({exc.msg} at byte {exc.pos})") from None
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    if not isinstance(payload, dict):
        raise PayloadError("body is not a JSON object")
    provider = Provider(raw.provider)
    if provider is Provider.META:
        return meta.parse_webhook(payload)
    if provider is Provider.WHAPI:
        return whapi.parse_webhook(payload, channel_key=raw.channel_key)
    if not raw.channel_key:
        raise PayloadError("chakra webhook without a plugin id")
    return chakra.parse_webhook(payload, plugin_id=raw.channel_key)


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
    with_media = [e for e in events if isinstance(e, InboundMessage) and e.media is not None]
    if first_media and with_media:
        await asyncio.gather(*(first_media_try(m, ctx) for m in with_media))
    return events


async def receive(data: bytes, ctx: ReceiveContext) -> list[Output]:
    raw = RawWebhook.decode(data)
    events = await receive_events(data, ctx, raw=raw)
    if not events:
        return []
    body = dumps({"received_at": raw.received_at, "events": [e.to_dict() for e in events]})
    return [Output(INBOUND_EVENTS, OutgoingMessage(body))]
