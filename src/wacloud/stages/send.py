"""Send: one queued outbox message to its provider, within the limits, classified by error code.

Before sending, the row is checked: a message that already has a provider message id (or is
past the queue) is never sent again, and the attempt is counted. Outcomes:
- accepted -> the result (status 3 + provider message id) goes to the save stage;
- the number's rate limit counts sends by when they start; a message whose slot is more than
  `max_inline_wait` away is released until just before it, its slot kept for its return;
- temporary (130429, 131056, 5xx, timeouts, a media host that does not resolve right now,
  ...) -> released with backoff and jitter, honouring Retry-After; 131056 slows only that
  recipient, 130429 the whole number;
- permanent (a media link the URL policy refuses, ...) -> status -100 with the reason;
- token or account problem (190, 368, ...) -> the channel is paused with the reason and the
  message goes back to pending, to wait instead of failing.
When attempts run out the message goes to the dead-letter queue and -100.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from wacloud.adapters.db import outbox
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.credentials import CredentialsBroker
from wacloud.media_copier import MediaCopier, MediaCopyError
from wacloud.model import (
    Channel,
    OutboundMessage,
    OutboundStatus,
    Provider,
    ProviderError,
    SendOutcome,
    SendResult,
)
from wacloud.provider_client import ProviderCallError, ProviderClient, ProviderTimeout
from wacloud.providers import chakra_send, meta_send, whapi_send
from wacloud.providers.errors import UnsupportedMessage
from wacloud.ratelimit import SendLimits
from wacloud.stages.envelopes import OUTBOUND_RESULTS, Output, RetryLater, dumps
from wacloud.urlpolicy import UrlRefused, check_public_url

log = logging.getLogger(__name__)

BUILDERS = {Provider.META: meta_send, Provider.WHAPI: whapi_send, Provider.CHAKRA: chakra_send}
# A message released to wait for its rate-limit slot comes back this much before the slot: the
# receive and the row check happen meanwhile, and the send still starts on time.
RETURN_LEAD_S = 0.5


@dataclass(slots=True)
class SendContext:
    broker: CredentialsBroker
    http: ProviderClient
    limits: SendLimits
    copier: MediaCopier
    dead_letters: Queue
    allow_local: bool = False
    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 30.0
    # Longer waits for a recipient's pacing or the number's rate release the message (with
    # the delay) instead of holding a worker and its queue claim.
    max_inline_wait: float = 2.0


def result(message: OutboundMessage, status: OutboundStatus, *,
           provider_message_id: str | None = None, error: ProviderError | None = None,
           excerpt: str | None = None) -> Output:
    body = {"tenant": message.tenant, "row_id": message.row_id, "channel": message.channel_key,
            "status": status.value,
            "provider_message_id": provider_message_id,
            "error_code": error.code if error else None,
            "error_reason": error.reason if error else None, "response_excerpt": excerpt}
    return Output(OUTBOUND_RESULTS, OutgoingMessage(dumps(body)))


def backoff(attempt: int, base: float, cap: float) -> float:
    return random.uniform(0.5, 1.0) * min(cap, base * 2.0 ** max(0, attempt - 1))


async def rehost_on_chakra(channel: Channel, message: OutboundMessage, ctx: SendContext
                           ) -> OutboundMessage:
    """Chakra sends media links through its own public media host, as the original did."""
    link = chakra_send.media_link(message)
    if link is None:
        return message
    await check_public_url(link, allow_local=ctx.allow_local)
    download = await ctx.copier.fetch_to_file(link, {}, ctx.timeout)
    try:
        filename = str(message.content.get("filename") or link.rsplit("/", 1)[-1] or "file")
        mime = (download.content_type or "application/octet-stream").split(";")[0]
        upload = chakra_send.upload_request(channel, filename, str(download.path), mime)
        answer = await ctx.http.perform(upload, ctx.timeout)
        rehosted: OutboundMessage = chakra_send.with_link(message, chakra_send.parse_upload(
            answer.status_code, answer.content))
        return rehosted
    finally:
        download.path.unlink(missing_ok=True)


async def call_provider(channel: Channel, message: OutboundMessage, ctx: SendContext
                        ) -> SendResult:
    module: Any = BUILDERS[channel.provider]
    try:
        if channel.provider is Provider.CHAKRA:
            message = await rehost_on_chakra(channel, message, ctx)
        request = module.build_send(channel, message)
    except UnsupportedMessage as exc:
        return SendResult(SendOutcome.FAILED, error=ProviderError("unsupported", str(exc)))
    except UrlRefused as exc:
        # A host that does not resolve right now may resolve later; a policy refusal never will.
        if exc.temporary:
            return SendResult(SendOutcome.RETRY, error=ProviderError("media", str(exc)))
        return SendResult(SendOutcome.FAILED, error=ProviderError("unsupported", str(exc)))
    except chakra_send.ChannelMisconfigured as exc:
        return SendResult(SendOutcome.PAUSE, error=ProviderError("channel", str(exc)))
    except chakra_send.UploadError as exc:
        outcome = SendOutcome.RETRY if exc.temporary else SendOutcome.FAILED
        return SendResult(outcome, error=ProviderError("media", exc.reason))
    except MediaCopyError as exc:
        outcome = SendOutcome.RETRY if exc.temporary else SendOutcome.FAILED
        return SendResult(outcome, error=ProviderError("media", exc.reason))
    except ProviderTimeout:
        return SendResult(SendOutcome.RETRY, error=ProviderError("timeout", "provider timed out"))
    except ProviderCallError as exc:
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", exc.kind))
    except httpx.HTTPError as exc:  # downloading a Chakra media link (wacloud.media_copier)
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", type(exc).__name__))
    try:
        answer = await ctx.http.perform(request, ctx.timeout)
    except ProviderTimeout:
        return SendResult(SendOutcome.RETRY, error=ProviderError("timeout", "provider timed out"))
    except ProviderCallError as exc:
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", exc.kind))
    classified: SendResult = module.classify(answer.status_code, answer.content, answer.headers,
                                             secrets=[channel.token])
    return classified


async def send(data: bytes, ctx: SendContext) -> list[Output]:
    message = OutboundMessage.from_dict(json.loads(data)["message"])
    channel = ctx.broker.tenant_channel(message.tenant, message.channel_key)
    if (channel is None or channel.paused) and await asyncio.to_thread(ctx.broker.refresh):
        # Our registry snapshot may be older than the collector's: a channel added, or
        # resumed, a moment ago. Without this look a new channel's first messages failed, and
        # after a resume the older message went back to the outbox while the next one was
        # sent: out of order.
        channel = ctx.broker.tenant_channel(message.tenant, message.channel_key)
    if channel is None:
        return [result(message, OutboundStatus.FAILED, error=ProviderError(
            "channel", f"tenant {message.tenant!r} has no channel {message.channel_key!r}"))]
    if channel.paused:
        return [result(message, OutboundStatus.PENDING, error=ProviderError(
            "paused", f"channel paused: {channel.pause_reason or 'no reason given'}"))]

    # The number's rate: a message whose slot is far off goes back to the queue until just
    # before it (keeping the slot) instead of holding a worker and its claim meanwhile.
    limits = ctx.limits
    window = limits.number(channel.key, channel.mps)
    slot_key = f"{message.tenant}:{message.row_id}"
    lead = min(RETURN_LEAD_S, ctx.max_inline_wait / 2)
    start = limits.start_for(slot_key, window, limits.now())
    if start - limits.now() > ctx.max_inline_wait:
        limits.hold(slot_key, start, limits.now())
        raise RetryLater(f"number's rate limit: starts in {start - limits.now():.1f}s",
                         max(0.0, start - limits.now() - lead))

    store = await ctx.broker.tenant_store_async(message.tenant)
    # Grouped with the other sends starting now: one commit for many attempts.
    state = await store.writes.run(partial(
        outbox.begin_attempt_in, row_id=message.row_id, channel=message.channel_key,
        recipient=message.recipient if message.type != "read" else None))
    if state is None or state.provider_message_id or state.status not in outbox.OPEN:
        return []  # gone, or already sent: never send twice
    if state.earlier_waiting:
        # Back to the outbox: the collector claims both again, oldest first.
        return [result(message, OutboundStatus.PENDING, error=ProviderError(
            "order", "waits for an earlier message to the same recipient"))]
    if state.attempts > ctx.max_attempts:
        return await give_up(message, data, ctx, state.attempts, None)

    pair = f"{channel.key}/{message.recipient}"
    wait = limits.pairs.delay(pair, limits.now())
    if wait > ctx.max_inline_wait:
        raise RetryLater(f"recipient paced for {wait:.1f}s", wait)
    if wait > 0:
        await asyncio.sleep(wait)  # pacing, not synchronization: the provider's pair limit
    if message.recipient and message.type != "read":
        limits.pairs.reserve(pair, limits.now())
    # Counted from its start, whatever the answer takes: other sends start meanwhile.
    start = limits.confirm(window, start, limits.now())
    if start - limits.now() > ctx.max_inline_wait:
        limits.hold(slot_key, start, limits.now())
        raise RetryLater(f"number's rate limit: starts in {start - limits.now():.1f}s",
                         max(0.0, start - limits.now() - lead))
    if start > limits.now():
        await asyncio.sleep(start - limits.now())  # the number's rate, not synchronization
    outcome = await call_provider(channel, message, ctx)
    excerpt = outcome.response_excerpt
    if outcome.outcome is SendOutcome.ACCEPTED:
        limits.pairs.confirm(pair)
        return [result(message, OutboundStatus.ACCEPTED,
                       provider_message_id=outcome.provider_message_id, excerpt=excerpt)]
    if outcome.outcome is SendOutcome.FAILED:
        return [result(message, OutboundStatus.FAILED, error=outcome.error, excerpt=excerpt)]
    if outcome.outcome is SendOutcome.PAUSE:
        reason = (f"provider error {outcome.error.code}: {outcome.error.reason}"
                  if outcome.error else "provider refused the channel's credentials")
        await asyncio.to_thread(ctx.broker.pause_channel, channel, reason)
        log.error("channel %s of tenant %s paused: %s", channel.key, channel.tenant, reason)
        return [result(message, OutboundStatus.PENDING, error=outcome.error, excerpt=excerpt)]

    # Temporary: back off and try again, unless the attempts are used up.
    if state.attempts >= ctx.max_attempts:
        return await give_up(message, data, ctx, state.attempts, outcome.error)
    now = limits.now()
    delay = outcome.retry_after or backoff(state.attempts, ctx.backoff_base, ctx.backoff_max)
    if outcome.recipient_throttled:
        delay = max(delay, limits.pairs.penalize(pair, now))
    if outcome.channel_throttled:
        limits.number(channel.key, channel.mps).block(now + (outcome.retry_after or 1.0))
    note = result(message, OutboundStatus.QUEUED, error=outcome.error, excerpt=excerpt)
    raise RetryLater(outcome.error.reason if outcome.error else "temporary failure", delay,
                     outputs=[note])


async def give_up(message: OutboundMessage, data: bytes, ctx: SendContext, attempts: int,
                  error: ProviderError | None) -> list[Output]:
    await ctx.dead_letters.send(data)
    reason = f"gave up after {attempts} attempts"
    if error is not None:
        reason += f"; last error {error.code}: {error.reason}"
    return [result(message, OutboundStatus.FAILED,
                   error=ProviderError(error.code if error else "attempts", reason))]
