"""The composition root: the one place that reads settings and wires adapters into stages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.http.download_clients import ClientShards
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media import open_media_store
from wacloud.adapters.media.base import MediaStore
from wacloud.adapters.queue import open_queue_broker
from wacloud.adapters.queue.base import Queue, QueueBroker, QueueSpec, ReceivedMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.ratelimit import SendLimits
from wacloud.hosting.runner import StageRunner
from wacloud.media.copier import MediaCopier
from wacloud.observability.metrics import (
    PARKED,
    GaugeSnapshot,
    reason_kind,
    set_dead_letter_source,
)
from wacloud.security.crypto import (
    SecretBox,
    load_secret_box,
    new_key,
    read_key_file,
    write_key_file,
)
from wacloud.settings import Settings
from wacloud.stages import envelopes
from wacloud.stages.collect import CollectContext, CollectSchedule
from wacloud.stages.envelopes import Output
from wacloud.stages.inbound import InboundContext, receive_and_write
from wacloud.stages.media import MediaContext, fetch_media
from wacloud.stages.receive import ReceiveContext
from wacloud.stages.save import SaveContext, save
from wacloud.stages.send import SendContext, send
from wacloud.stages.write import WriteContext, write

log = logging.getLogger(__name__)

# Media copies in flight while webhooks wait on `inbound.raw`: rows first, media still moving.
MEDIA_CONCURRENCY_DURING_BURSTS = 1


def queue_specs(settings: Settings) -> dict[str, QueueSpec]:
    return {
        envelopes.INBOUND_RAW: QueueSpec(envelopes.INBOUND_RAW,
                                         max_receives=settings.queue_max_receives,
                                         visibility_timeout=settings.queue_visibility_timeout_s),
        envelopes.INBOUND_EVENTS: QueueSpec(envelopes.INBOUND_EVENTS,
                                            max_receives=settings.queue_max_receives,
                                            visibility_timeout=settings.queue_visibility_timeout_s),
        # The media stage counts its own attempts; the DLQ is only for crashes beyond that.
        # Pacing and backoff release messages many times; attempts are counted on the row.
        # A retry is one receive, and pacing or a leased row may add a few: room for every
        # attempt the retry period allows, so the row, not the queue, decides when to give up.
        # Its visibility is only how soon a crashed worker's sends come back: the runner's
        # heartbeat keeps a message hidden however long its send takes.
        envelopes.OUTBOUND_SEND: QueueSpec(envelopes.OUTBOUND_SEND, fifo=True,
                                           max_receives=max(50, 3 * settings.send_max_attempts),
                                           visibility_timeout=settings.send_timeout_s * 3),
        envelopes.OUTBOUND_SEND_DEAD: QueueSpec(envelopes.OUTBOUND_SEND_DEAD),
        envelopes.OUTBOUND_RESULTS: QueueSpec(envelopes.OUTBOUND_RESULTS,
                                              max_receives=settings.queue_max_receives,
                                              visibility_timeout=settings.queue_visibility_timeout_s),
        envelopes.INBOUND_MEDIA: QueueSpec(envelopes.INBOUND_MEDIA,
                                           max_receives=settings.media_max_attempts + 3,
                                           visibility_timeout=settings.media_timeout_s + 30),
    }


def init_data_dir(settings: Settings) -> bool:
    """Create the data dir, an encryption key (mode 0600) and the registry. True if new."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    created = False
    if not settings.encryption_key and not read_key_file(settings.key_file):
        write_key_file(settings.key_file, [new_key()])
        created = True
    registry = open_registry(settings)
    registry.create_schema()
    registry.engine.dispose()
    return created


def secret_box(settings: Settings) -> SecretBox:
    return load_secret_box(settings.encryption_key, settings.key_file)


def open_registry(settings: Settings) -> Registry:
    return Registry(create_engine(settings.registry), secret_box(settings))


@dataclass
class Gateway:
    """Everything a hosting mode needs, built from one Settings object."""

    settings: Settings
    registry: Registry
    broker: CredentialsBroker
    queue_broker: QueueBroker
    queues: Mapping[str, Queue]
    media_store: MediaStore
    send_http: ProviderClient
    media_http: ClientShards
    copier: MediaCopier
    limits: SendLimits
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    collect_wake: asyncio.Event = field(default_factory=asyncio.Event)
    collect_schedule: CollectSchedule = field(default_factory=CollectSchedule)

    def wake_collector(self, tenant: str) -> None:
        """A row was inserted in `tenant`'s outbox: collect it at once."""
        self.collect_schedule.wake(tenant)
        self.collect_wake.set()

    async def park(self, *, stage: str, reason: str, payload: str, provider: str | None = None,
                   channel_key: str | None = None, raw_body: str | None = None,
                   signature: str | None = None) -> int:
        item = await asyncio.to_thread(self.registry.park, stage=stage, reason=reason,
                                       payload=payload, provider=provider,
                                       channel_key=channel_key, raw_body=raw_body,
                                       signature=signature)
        PARKED.labels(stage, reason_kind(reason)).inc()
        log.warning("parked item %d from stage %s: %s", item, stage, reason)
        return item

    def runners(self) -> list[StageRunner]:
        s = self.settings
        receive_ctx = ReceiveContext(self.broker, self.copier, self.park,
                                     s.media_first_try_timeout_s)
        write_ctx = WriteContext(self.broker, self.park)
        media_ctx = MediaContext(self.broker, self.copier, s.media_max_attempts,
                                 s.media_backoff_base_s, s.media_backoff_max_s, s.media_timeout_s)

        def handler(fn: Callable[..., Awaitable[list[Output]]], ctx: Any
                    ) -> Callable[[ReceivedMessage], Awaitable[list[Output]]]:
            async def run(message: ReceivedMessage) -> list[Output]:
                return await fn(message.body, ctx)
            return run

        async def media_handler(message: ReceivedMessage) -> list[Output]:
            return await fetch_media(message.body, message.receive_count, media_ctx)

        # Receive and write run fused here (one process hosts both); `write` still serves
        # whatever reaches `inbound.events`.
        inbound_ctx = InboundContext(receive_ctx, write_ctx)

        async def inbound_batch(messages: list[ReceivedMessage]) -> list[Output]:
            return await receive_and_write([m.body for m in messages], inbound_ctx)

        async def inbound_one(message: ReceivedMessage) -> list[Output]:
            return await inbound_batch([message])

        send_ctx = SendContext(
            self.broker, self.send_http, self.limits, self.copier, self.queues[
                envelopes.OUTBOUND_SEND_DEAD], s.dev_allow_local_urls, s.send_max_attempts,
            s.send_backoff_base_s, s.send_backoff_max_s, s.send_timeout_s,
            retry_period=s.send_retry_period_s, lease_margin=s.send_lease_margin_s)
        save_ctx = SaveContext(self.broker)

        async def save_batch(messages: list[ReceivedMessage]) -> list[Output]:
            # Results of many sends at once; the tenant's group commit makes them few commits.
            done = await asyncio.gather(*(save(m.body, save_ctx) for m in messages))
            return [output for outputs in done for output in outputs]
        q = self.queues
        runners = [
            StageRunner("send", q[envelopes.OUTBOUND_SEND], handler(send, send_ctx), q,
                        concurrency=s.send_concurrency, wait_seconds=0.5),
            StageRunner("save", q[envelopes.OUTBOUND_RESULTS], handler(save, save_ctx), q,
                        concurrency=4, batch=100, batch_handler=save_batch),
            StageRunner("receive", q[envelopes.INBOUND_RAW], inbound_one, q, concurrency=4,
                        batch=150, batch_handler=inbound_batch),
            StageRunner("write", q[envelopes.INBOUND_EVENTS], handler(write, write_ctx), q,
                        concurrency=8),
            StageRunner("media", q[envelopes.INBOUND_MEDIA], media_handler, q,
                        concurrency=s.media_concurrency, defer_to=q[envelopes.INBOUND_RAW],
                        deferred_concurrency=MEDIA_CONCURRENCY_DURING_BURSTS),
        ]
        # A tenant database that is down delays these stages for hours, never loses their input.
        for runner in runners:
            runner.db_retry_period = s.db_retry_period_s
            runner.db_retry_max_delay = s.db_retry_max_delay_s
            runner.shutdown_grace = s.shutdown_grace_s
        return runners

    def collect_context(self) -> CollectContext:
        s = self.settings
        self.collect_schedule.poll_s = s.collect_poll_s
        self.collect_schedule.idle_max_s = s.collect_idle_max_s
        return CollectContext(self.broker, self.queues[envelopes.OUTBOUND_SEND],
                              s.collect_batch, s.reservation_lease_s, s.queued_stale_s,
                              stop=self.stop, concurrency=s.collect_concurrency,
                              schedule=self.collect_schedule)

    def dead_letter_sources(self) -> dict[str, Queue]:
        """The queues whose dead letters an operator sees and replays (`wacloud dlq`), by name;
        `outbound.send.dlq` is the send queue's own dead-letter queue, not one of them."""
        return {name: queue for name, queue in self.queues.items()
                if not name.endswith(".dlq")}

    async def gauges(self, workers: list[dict[str, object]]) -> GaugeSnapshot:
        """What `/metrics` reads at each scrape: queue depths and ages, paused channels and
        the stage workers' state (`WorkerSupervisor.status`)."""
        snapshot = GaugeSnapshot()
        for name, queue in self.queues.items():
            if name.endswith(".dlq"):
                continue  # its messages are counted as the source queue's dead letters
            depth = await queue.depth()
            for state in ("visible", "in_flight", "delayed"):
                snapshot.queue_depth[(name, state)] = depth.get(state, 0)
            snapshot.queue_oldest[name] = await queue.oldest_age() or 0.0
            snapshot.queue_lag[name] = await queue.lag_seconds() or 0.0
        snapshot.channels_paused = sorted(
            (c.tenant, c.key, c.provider.value, c.paused) for c in self.broker.channels())
        snapshot.workers = [(str(w["stages"]), bool(w["alive"]), int(str(w["restarts"])))
                            for w in workers]
        return snapshot

    async def dead_letter_counts(self) -> dict[str, int]:
        return {name: await queue.dead_count()
                for name, queue in self.dead_letter_sources().items()}

    async def close(self) -> None:
        await self.send_http.aclose()
        await self.media_http.aclose()
        await self.queue_broker.close()
        self.broker.close()
        self.registry.engine.dispose()


def build_gateway(settings: Settings) -> Gateway:
    init_data_dir(settings)
    registry = open_registry(settings)
    broker = CredentialsBroker(
        registry, tenants_dir=settings.tenants_dir, cache_seconds=settings.credentials_cache_s,
        global_meta_app_secret=settings.meta_app_secret,
        key_loader=lambda: secret_box(settings),
        sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
        tenant_pool_size=settings.tenant_pool_size,
        tenant_engines_max=settings.tenant_engines_max,
        tenant_idle_close_s=settings.tenant_idle_close_s)
    broker.refresh(force=True)
    media_store = open_media_store(settings.media, settings)
    queue_broker = open_queue_broker(settings.queues, settings, media_store)
    queues = {name: queue_broker.queue(spec) for name, spec in queue_specs(settings).items()}
    media_http = ClientShards(8, timeout=httpx.Timeout(30.0, connect=10.0),
                              limits=httpx.Limits(max_connections=64))
    send_http = ProviderClient(connections_per_host=max(settings.send_concurrency, 1))
    copier = MediaCopier(media_store, media_http, tmp_dir=settings.data_dir / "tmp",
                         max_bytes=settings.max_media_bytes,
                         allow_local=settings.dev_allow_local_urls, api=send_http)
    limits = SendLimits(settings.pair_burst, settings.pair_interval_s,
                        settings.send_rate_margin)
    set_dead_letter_source(lambda: {name: count for name, queue in queues.items()
                                    if not name.endswith(".dlq")
                                    and (count := queue.count_dead()) is not None})
    return Gateway(settings, registry, broker, queue_broker, queues, media_store, send_http,
                   media_http, copier, limits)
