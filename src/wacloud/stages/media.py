"""Media retry: copy a message's media that did not make it at the first try, with backoff.

When the attempts run out (or the failure is permanent: too big, refused host, unknown
media) the row says `failed` with the reason; `wacloud media refetch` can queue it again.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass

from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import InboundMessage, MediaStatus
from wacloud.media.copier import MediaCopier, MediaCopyError
from wacloud.stages.envelopes import FORCE, JUST_STORED, Output, RetryLater


@dataclass(slots=True)
class MediaContext:
    broker: CredentialsBroker
    copier: MediaCopier
    max_attempts: int = 6
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    timeout: float = 60.0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (attempt 1 -> up to `base` seconds)."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


async def fetch_media(data: bytes, receive_count: int, ctx: MediaContext) -> list[Output]:
    job = json.loads(data)
    tenant: str = job["tenant"]
    message = InboundMessage.from_dict(job["message"])
    media = message.media
    if media is None:
        return []
    store = await ctx.broker.tenant_store_async(tenant)
    # A job the write stage queued right after the row's commit needs no look at the row on
    # its first receive (at 200 copies/s that read was a thread hop and a query each): the row
    # exists, and its media is pending, unless a provider's retry of the webhook queued a
    # second job for the same file, which then copies it again (the key names the content
    # and the day: the same stored file, unless the retry came on another day).
    if receive_count > 1 or not job.get(JUST_STORED):
        current = await asyncio.to_thread(store.media_status, message.channel_key,
                                          message.provider_message_id)
        if current is None:
            raise RetryLater("message row not stored yet", ctx.backoff_base)
        if current == MediaStatus.STORED.value and not job.get(FORCE):
            return []
    channel = ctx.broker.channel(message.provider, message.channel_key, message.account_key)
    try:
        if channel is None:
            raise MediaCopyError("the channel no longer exists", temporary=False)
        stored = await ctx.copier.copy(channel, media, timeout=ctx.timeout)
    except MediaCopyError as exc:
        media.error = exc.reason
        if exc.temporary and receive_count < ctx.max_attempts:
            media.status = MediaStatus.PENDING
            await store.set_media_grouped(message.channel_key, message.provider_message_id,
                                          media)
            raise RetryLater(exc.reason, backoff(receive_count, ctx.backoff_base,
                                                 ctx.backoff_max)) from None
        media.status = MediaStatus.FAILED
        if exc.temporary:
            media.error = f"{exc.reason} (gave up after {receive_count} attempts)"
        await store.set_media_grouped(message.channel_key, message.provider_message_id, media)
        return []
    await store.set_media_grouped(message.channel_key, message.provider_message_id, stored)
    return []
