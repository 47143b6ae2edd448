"""Send: one queued outbox message to its provider, within the limits, classified by error code.

The row decides, not the queue: before calling the provider an attempt takes the row's send
lease (`outbox.begin_attempt_in`: a random owner token, for `SendContext.lease_seconds`), only
if the row is open, has no provider message id and no live lease of another attempt. A copy of
the message that the queue delivers meanwhile (its visibility ran out while the first copy
waited or called) finds that lease and is released until it ends; a copy that comes after an
acceptance finds the provider message id and is dropped. Each outcome is written on the row by
this stage, in the same group commit as the lease, before the message is acknowledged:
- accepted -> status 3 + provider message id, and receipts that arrived before it are
  applied in the same transaction (only if that write fails does the result go to the save
  stage, before the message is acknowledged);
- the number's rate limit counts sends by when they start; a message whose slot is more than
  `max_inline_wait` away is released until just before it (before it takes the lease), its
  slot kept for its return;
- temporary (5xx, 1, 2, 4, 80007, 130429, 131000, 131056, timeouts, network errors, a media
  host that does not resolve right now, ...) -> released with capped exponential backoff and
  jitter (honouring Retry-After); 131056 slows only that recipient, 130429 the whole
  number. Retried for `retry_period` (WACLOUD_SEND_RETRY_PERIOD_S) from the row's first
  temporary failure, then -100 "gave up after N attempts over Xs; last error CODE: reason"
  and the message goes to the dead-letter queue (`max_attempts` is only a safety cap);
- permanent (a media link the URL policy refuses, ...) -> status -100 with the reason;
- channel problem (190, 368, 10, 200-299, 100 about an unknown phone number id, ...) -> the
  channel is paused with the reason and the message goes back to pending, to wait.
Outcomes other than acceptance only apply while the row is still this attempt's, so nothing
late or redelivered moves a row backwards (see `wacloud.adapters.db.tenant.outbox`).

The one window for a duplicate: the process dies after the provider took the message and
before the acceptance is committed (the answer's way back plus one group commit,
milliseconds); a copy delivered after the lease ends then sends again. If only the write fails,
the acceptance still goes to the save stage before the message is acknowledged. A timeout is
the same ambiguity (the provider may have taken it; Graph has no idempotency key): it is
retried, as a temporary failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import NoReturn

import httpx

from wacloud.adapters.db.tenant import outbox
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient, ProviderTimeout
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Channel,
    OutboundMessage,
    OutboundStatus,
    ProviderError,
    SendOutcome,
    SendResult,
)
from wacloud.domain.ratelimit import SendLimits
from wacloud.media.copier import MediaCopier, MediaCopyError
from wacloud.observability.metrics import OUTBOUND_LATENCY, SENDS, error_label
from wacloud.observability.tracing import log_context, outbound_trace_id
from wacloud.providers import PROVIDERS
from wacloud.providers.base import ChannelMisconfigured, ProviderPort, UploadError
from wacloud.providers.errors import UnsupportedMessage
from wacloud.security.urlpolicy import UrlRefused, check_public_url
from wacloud.stages.envelopes import OUTBOUND_RESULTS, Output, RetryLater, dumps

log = logging.getLogger(__name__)

# A message released to wait for its rate-limit slot comes back this much before the slot: the
# receive and the row check happen meanwhile, and the send still starts on time.
RETURN_LEAD_S = 0.5
# A send lease covers the longest attempt: a re-hosted media send is a download, an upload and
# the send, each up to the timeout; plus the inline pacing wait and a margin (the default of
# WACLOUD_SEND_LEASE_MARGIN_S).
LEASE_CALLS = 3
LEASE_MARGIN_S = 30.0
# A copy that finds the row leased but cannot see until when (its transaction's snapshot is
# older than the winner's commit, on MySQL) looks again after this.
LEASE_RECHECK_S = 1.0


@dataclass(slots=True)
class SendContext:
    broker: CredentialsBroker
    http: ProviderClient
    limits: SendLimits
    copier: MediaCopier
    dead_letters: Queue
    allow_local: bool = False
    max_attempts: int = 100  # a safety cap: the retry period decides
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 30.0
    # Longer waits for a recipient's pacing or the number's rate release the message (with
    # the delay) instead of holding a worker and its queue claim.
    max_inline_wait: float = 2.0
    # Temporary trouble is retried this long from the row's first temporary failure.
    retry_period: float = 3600.0
    # How long an attempt holds its row; 0 = long enough for the longest attempt, plus
    # `lease_margin`.
    lease: float = 0.0
    lease_margin: float = LEASE_MARGIN_S

    def lease_seconds(self) -> float:
        return self.lease or (LEASE_CALLS * self.timeout + self.max_inline_wait
                              + self.lease_margin)


@dataclass(slots=True)
class Lease:
    """The row's send lease as this attempt holds it. `held` until the provider is called:
    if the attempt ends before that (released for pacing, or failed), the lease is given back
    at once; after, never (the provider may have the message)."""

    store: TenantStore | None = None
    row_id: int = 0
    owner: str = ""
    held: bool = False


def result(message: OutboundMessage, status: OutboundStatus, *,
           provider_message_id: str | None = None, error: ProviderError | None = None,
           excerpt: str | None = None, owner: str | None = None) -> Output:
    body = {"tenant": message.tenant, "row_id": message.row_id, "channel": message.channel_key,
            "status": status.value,
            "provider_message_id": provider_message_id,
            "error_code": error.code if error else None,
            "error_reason": error.reason if error else None, "response_excerpt": excerpt}
    if owner is not None:
        body["owner"] = owner  # the save stage applies it only while the row is still its
    return Output(OUTBOUND_RESULTS, OutgoingMessage(dumps(body)))


async def settle(ctx: SendContext, message: OutboundMessage, status: OutboundStatus, *,
                 store: TenantStore | None = None, owner: str | None = None,
                 provider_message_id: str | None = None, error: ProviderError | None = None,
                 excerpt: str | None = None) -> list[Output]:
    """Write an outcome on its row now, an acceptance with the receipts that arrived before
    it (see `outbox.save_result_in`). An outcome whose write fails goes to the save stage, so
    that it is not lost with the acknowledged message."""
    try:
        if store is None:
            store = await ctx.broker.tenant_store_async(message.tenant)
        await store.writes.run(partial(
            outbox.save_result_in, store=store, row_id=message.row_id, owner=owner,
            status=status.value, provider_message_id=provider_message_id,
            error_code=error.code if error else None,
            error_reason=error.reason if error else None, response_excerpt=excerpt,
            channel=message.channel_key))
    except Exception as exc:
        log.warning("tenant %s row %d: send outcome %s not written (%s); left to the save "
                    "stage", message.tenant, message.row_id, status.label, type(exc).__name__)
        return [result(message, status, provider_message_id=provider_message_id, error=error,
                       excerpt=excerpt, owner=owner)]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("send result saved", extra={"status": status.value,
                                              "error_code": error.code if error else None})
    return []


def backoff(attempt: int, base: float, cap: float) -> float:
    return random.uniform(0.5, 1.0) * min(cap, base * 2.0 ** max(0, attempt - 1))


async def rehost(provider: ProviderPort, channel: Channel, message: OutboundMessage, link: str,
                 ctx: SendContext) -> OutboundMessage:
    """Download a media link and upload it to the provider, which sends media from its own
    host (Chakra's public media store, as the original did): the message with the new link."""
    await check_public_url(link, allow_local=ctx.allow_local)
    download = await ctx.copier.fetch_to_file(link, {}, ctx.timeout)
    try:
        filename = str(message.content.get("filename") or link.rsplit("/", 1)[-1] or "file")
        mime = (download.content_type or "application/octet-stream").split(";")[0]
        upload = provider.upload_request(channel, filename, str(download.path), mime)
        answer = await ctx.http.perform(upload, ctx.timeout)
        return provider.with_link(message, provider.read_upload(answer.status_code,
                                                                answer.content))
    finally:
        download.path.unlink(missing_ok=True)


async def call_provider(channel: Channel, message: OutboundMessage, ctx: SendContext
                        ) -> SendResult:
    provider = PROVIDERS[channel.provider]
    try:
        link = provider.rehost_link(message)
        if link is not None:
            message = await rehost(provider, channel, message, link, ctx)
        request = provider.build_send(channel, message)
    except UnsupportedMessage as exc:
        return SendResult(SendOutcome.FAILED, error=ProviderError("unsupported", str(exc)))
    except UrlRefused as exc:
        # A host that does not resolve right now may resolve later; a policy refusal never will.
        if exc.temporary:
            return SendResult(SendOutcome.RETRY, error=ProviderError("media", str(exc)))
        return SendResult(SendOutcome.FAILED, error=ProviderError("unsupported", str(exc)))
    except ChannelMisconfigured as exc:
        return SendResult(SendOutcome.PAUSE, error=ProviderError("channel", str(exc)))
    except UploadError as exc:
        outcome = SendOutcome.RETRY if exc.temporary else SendOutcome.FAILED
        return SendResult(outcome, error=ProviderError("media", exc.reason))
    except MediaCopyError as exc:
        outcome = SendOutcome.RETRY if exc.temporary else SendOutcome.FAILED
        return SendResult(outcome, error=ProviderError("media", exc.reason))
    except ProviderTimeout:
        return SendResult(SendOutcome.RETRY, error=ProviderError("timeout", "provider timed out"))
    except ProviderCallError as exc:
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", exc.kind))
    except httpx.HTTPError as exc:  # downloading a media link to re-host (wacloud.media.copier)
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", type(exc).__name__))
    try:
        answer = await ctx.http.perform(request, ctx.timeout)
    except ProviderTimeout:
        return SendResult(SendOutcome.RETRY, error=ProviderError("timeout", "provider timed out"))
    except ProviderCallError as exc:
        return SendResult(SendOutcome.RETRY, error=ProviderError("network", exc.kind))
    return provider.classify(answer.status_code, answer.content, answer.headers,
                             secrets=[channel.token])


def count(ctx: SendContext, message: OutboundMessage, result: str,
          error: ProviderError | None = None, channel: Channel | None = None) -> None:
    """One send outcome in `wacloud_sends_total` (and the end-to-end latency of an
    acceptance)."""
    channel = channel or ctx.broker.tenant_channel(message.tenant, message.channel_key)
    provider = channel.provider.value if channel is not None else ""
    SENDS.labels(message.tenant, message.channel_key, provider, result,
                 error_label(error.code if error else None)).inc()
    if result == "accepted" and message.created_at:
        OUTBOUND_LATENCY.labels(message.tenant, provider).observe(
            max(time.time() - message.created_at, 0.0))


async def send(data: bytes, ctx: SendContext) -> list[Output]:
    message = OutboundMessage.from_dict(json.loads(data)["message"])
    lease = Lease()
    with log_context(trace_id=outbound_trace_id(message.tenant, message.row_id),
                     tenant=message.tenant, channel=message.channel_key,
                     message_id=message.row_id):
        try:
            return await send_once(message, data, ctx, lease)
        except Exception:
            if lease.held:
                await give_back(lease)
            raise


async def give_back(lease: Lease) -> None:
    assert lease.store is not None
    lease.held = False
    try:
        await lease.store.writes.run(partial(outbox.release_lease_in, row_id=lease.row_id,
                                             owner=lease.owner))
    except Exception as exc:  # it ends on its own; the next copy just waits for it
        log.warning("row %d: send lease not given back (%s)", lease.row_id,
                    type(exc).__name__)


def wait_for_slot(limits: SendLimits, slot_key: str, start: float, lead: float) -> NoReturn:
    """Release the message until just before its far-off slot, keeping the slot for it."""
    limits.hold(slot_key, start, limits.now())
    raise RetryLater(f"number's rate limit: starts in {start - limits.now():.1f}s",
                     max(0.0, start - limits.now() - lead))


def lease_wait(state: outbox.OutboxState) -> float:
    if state.lease_until is None:
        return LEASE_RECHECK_S
    return max((state.lease_until - utcnow()).total_seconds(), 0.0) + 0.1


async def send_once(message: OutboundMessage, data: bytes, ctx: SendContext, lease: Lease
                    ) -> list[Output]:
    if message.expires_at is not None and time.time() >= message.expires_at:
        # Its validity passed while it waited (queue, backoff): a late one-time password is
        # worse than none. Only a row still open and not being sent by another copy fails.
        ends = datetime.fromtimestamp(message.expires_at, UTC).isoformat()
        expired = ProviderError(
            "expired", f"expired: its validity ended at {ends} before it could be sent")
        count(ctx, message, "expired", expired)
        return await settle(ctx, message, OutboundStatus.FAILED, error=expired)
    channel = ctx.broker.tenant_channel(message.tenant, message.channel_key)
    if channel is None or channel.paused:
        # Our registry snapshot may be older than the collector's: a channel added, or
        # resumed, a moment ago. Without this look a new channel's first messages failed, and
        # after a resume the older message went back to the outbox while the next one was
        # sent: out of order. Looked up again whatever `refresh` says: it says False when
        # another task of this process renewed the snapshot since our look.
        await asyncio.to_thread(ctx.broker.refresh)
        channel = ctx.broker.tenant_channel(message.tenant, message.channel_key)
    if channel is None:
        missing = ProviderError(
            "channel", f"tenant {message.tenant!r} has no channel {message.channel_key!r}")
        count(ctx, message, "failed", missing)
        return await settle(ctx, message, OutboundStatus.FAILED, error=missing)
    if channel.paused:
        paused = ProviderError(
            "paused", f"channel paused: {channel.pause_reason or 'no reason given'}")
        count(ctx, message, "paused", paused, channel)
        return await settle(ctx, message, OutboundStatus.PENDING, error=paused)

    # The number's rate: a message whose slot is far off goes back to the queue until just
    # before it (keeping the slot) instead of holding a worker and its claim meanwhile.
    limits = ctx.limits
    window = limits.number(channel.key, channel.mps)
    slot_key = f"{message.tenant}:{message.row_id}"
    lead = min(RETURN_LEAD_S, ctx.max_inline_wait / 2)
    start = limits.start_for(slot_key, window, limits.now())
    if start - limits.now() > ctx.max_inline_wait:
        wait_for_slot(limits, slot_key, start, lead)

    store = await ctx.broker.tenant_store_async(message.tenant)
    owner = uuid.uuid4().hex
    # Grouped with the other sends starting now: one commit for many attempts.
    state = await store.writes.run(partial(
        outbox.begin_attempt_in, row_id=message.row_id, owner=owner,
        lease_seconds=ctx.lease_seconds(), channel=message.channel_key,
        recipient=message.recipient if message.type != "read" else None))
    if state is None or not state.open:
        return []  # gone, or already sent: never send twice
    if state.earlier_waiting and state.lease_until is None:
        # Sent back to the outbox: the collector claims both again, oldest first.
        return []
    if state.owner is None:
        # Another copy of this message holds the row (the queue delivered it again while
        # the first was still at it): that one decides. Look again when its lease ends.
        raise RetryLater("another attempt is sending this row", lease_wait(state))
    lease.store, lease.row_id, lease.owner, lease.held = store, message.row_id, owner, True
    if state.attempts > ctx.max_attempts:
        count(ctx, message, "gave_up", None, channel)
        return await give_up(message, data, ctx, store, owner, state, None)

    pair = f"{channel.key}/{message.recipient}"
    wait = limits.pairs.delay(pair, limits.now())
    if wait > ctx.max_inline_wait:
        raise RetryLater(f"recipient paced for {wait:.1f}s", wait)
    if wait > 0:
        await asyncio.sleep(wait)  # pacing, not synchronization: the provider's pair limit
    if message.recipient and message.type != "read":
        limits.pairs.reserve(pair, limits.now())
    # Counted from its start, whatever the answer takes: other sends start meanwhile.
    while True:
        start = limits.confirm(window, start, limits.now())
        if start - limits.now() > ctx.max_inline_wait:
            wait_for_slot(limits, slot_key, start, lead)
        if start > limits.now():
            await asyncio.sleep(start - limits.now())  # the number's rate, not synchronization
        if limits.now() - start <= window.late_tolerance:
            break
        # Woken too late for the slot (a busy loop): starting now could crowd the next send.
    lease.held = False  # from here on the provider may have it: the lease stays
    outcome = await call_provider(channel, message, ctx)
    excerpt = outcome.response_excerpt
    if outcome.outcome is SendOutcome.ACCEPTED:
        limits.pairs.confirm(pair)
        count(ctx, message, "accepted", None, channel)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send accepted", extra={"provider": channel.provider.value,
                                              "provider_message_id":
                                                  outcome.provider_message_id})
        return await settle(ctx, message, OutboundStatus.ACCEPTED, store=store, owner=owner,
                            provider_message_id=outcome.provider_message_id, excerpt=excerpt)
    if outcome.outcome is SendOutcome.FAILED:
        count(ctx, message, "failed", outcome.error, channel)
        return await settle(ctx, message, OutboundStatus.FAILED, store=store, owner=owner,
                            error=outcome.error, excerpt=excerpt)
    if outcome.outcome is SendOutcome.PAUSE:
        reason = (f"provider error {outcome.error.code}: {outcome.error.reason}"
                  if outcome.error else "provider refused the channel's credentials")
        count(ctx, message, "paused", outcome.error, channel)
        await asyncio.to_thread(ctx.broker.pause_channel, channel, reason)
        log.error("channel %s of tenant %s paused: %s", channel.key, channel.tenant, reason)
        return await settle(ctx, message, OutboundStatus.PENDING, store=store, owner=owner,
                            error=outcome.error, excerpt=excerpt)

    # Temporary: back off and try again, until the retry period (or the safety cap) is used up.
    elapsed = retrying_for(state)
    if state.attempts >= ctx.max_attempts or elapsed >= ctx.retry_period:
        count(ctx, message, "gave_up", outcome.error, channel)
        return await give_up(message, data, ctx, store, owner, state, outcome.error)
    count(ctx, message, "retry", outcome.error, channel)
    now = limits.now()
    delay = max(outcome.retry_after or 0.0,
                backoff(state.attempts, ctx.backoff_base, ctx.backoff_max))
    if outcome.recipient_throttled:
        delay = max(delay, limits.pairs.penalize(pair, now))
    if outcome.channel_throttled:
        limits.number(channel.key, channel.mps).block(now + (outcome.retry_after or 1.0))
    # The last try comes when the period ends, not a backoff after it.
    delay = min(delay, ctx.retry_period - elapsed)
    notes = await settle(ctx, message, OutboundStatus.QUEUED, store=store, owner=owner,
                         error=outcome.error, excerpt=excerpt)
    raise RetryLater(outcome.error.reason if outcome.error else "temporary failure", delay,
                     outputs=notes)


def retrying_for(state: outbox.OutboxState) -> float:
    """Seconds since the row first failed temporarily (0 if this is its first failure)."""
    if state.retry_since is None:
        return 0.0
    return max((utcnow() - state.retry_since).total_seconds(), 0.0)


async def give_up(message: OutboundMessage, data: bytes, ctx: SendContext, store: TenantStore,
                  owner: str, state: outbox.OutboxState,
                  error: ProviderError | None) -> list[Output]:
    await ctx.dead_letters.send(data)
    reason = f"gave up after {state.attempts} attempts over {retrying_for(state):.0f}s"
    if error is not None:
        reason += f"; last error {error.code}: {error.reason}"
    return await settle(ctx, message, OutboundStatus.FAILED, store=store, owner=owner,
                        error=ProviderError(error.code if error else "attempts", reason))
