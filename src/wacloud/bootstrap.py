"""The composition root: the one place that reads settings and wires adapters into stages.

`build_gateway(settings)` opens every adapter the settings name; its keyword seams take ready
ones instead (a test's in-memory queue broker and media store, another host's HTTP client).
`Gateway.stages()` says what each stage consumes, produces and runs; `hosting/` turns those
specs into runners. The openers here (`open_registry`, `open_credentials`, `open_media`,
`open_queues`, `opened_queues`) are what the CLI and the admin tools use, so every command
reaches the same backends as a running gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media import open_media_store
from wacloud.adapters.media.base import MediaStore
from wacloud.adapters.queue import open_queue_broker
from wacloud.adapters.queue.base import Queue, QueueBroker, QueueSpec, ReceivedMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.ratelimit import SendLimits
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
from wacloud.stages.write import WriteContext

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


def open_credentials(settings: Settings, registry: Registry | None = None) -> CredentialsBroker:
    """The credentials broker every process and command uses, built one way from the settings
    (the registry of `settings` unless one is given; the broker does not dispose it)."""
    return CredentialsBroker(
        registry if registry is not None else open_registry(settings),
        tenants_dir=settings.tenants_dir, cache_seconds=settings.credentials_cache_s,
        global_meta_app_secret=settings.meta_app_secret,
        key_loader=lambda: secret_box(settings),
        sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
        tenant_pool_size=settings.tenant_pool_size,
        tenant_engines_max=settings.tenant_engines_max,
        tenant_idle_close_s=settings.tenant_idle_close_s)


def open_media(settings: Settings) -> MediaStore:
    """The media store of `WACLOUD_MEDIA_URL` (the local folder by default)."""
    return open_media_store(settings.media, settings)


def open_queues(settings: Settings, media_store: MediaStore) -> QueueBroker:
    """The queue broker of `WACLOUD_QUEUE_URL` (the embedded SQLite file by default);
    `media_store` keeps bodies too large for a backend's messages (SQS)."""
    return open_queue_broker(settings.queues, settings, media_store)


@contextlib.asynccontextmanager
async def opened_queues(settings: Settings) -> AsyncIterator[QueueBroker]:
    """The configured queue broker with its media store, both closed on the way out: for a
    command that reads or feeds a few queues."""
    media_store = open_media(settings)
    try:
        broker = open_queues(settings, media_store)
        try:
            yield broker
        finally:
            await broker.close()
    finally:
        await media_store.close()


Handler = Callable[[ReceivedMessage], Awaitable[list[Output]]]
BatchHandler = Callable[[list[ReceivedMessage]], Awaitable[list[Output]]]


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage as a host runs it: the queue it consumes, the queues its outputs go to, its
    handler (and batch handler), and how many messages it takes on at once."""

    name: str
    consumes: str
    produces: tuple[str, ...]
    handler: Handler
    batch_handler: BatchHandler | None = None
    concurrency: int = 8
    batch: int = 10
    wait_seconds: float = 1.0
    # While `defer_to` has messages waiting, run only `deferred_concurrency` at a time.
    defer_to: str | None = None
    deferred_concurrency: int = 1


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
    media_http: DownloadClient
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

    def stages(self) -> list[StageSpec]:
        """Every queue-driven stage, wired to this gateway's adapters. `inbound` runs receive
        and write fused (`stages/inbound.py`): nothing feeds `inbound.events`, so no stage
        polls it."""
        s = self.settings
        receive_ctx = ReceiveContext(self.broker, self.copier, self.park,
                                     s.media_first_try_timeout_s)
        inbound_ctx = InboundContext(receive_ctx, WriteContext(self.broker, self.park))
        media_ctx = MediaContext(self.broker, self.copier, s.media_max_attempts,
                                 s.media_backoff_base_s, s.media_backoff_max_s, s.media_timeout_s)
        send_ctx = SendContext(
            self.broker, self.send_http, self.limits, self.copier, self.queues[
                envelopes.OUTBOUND_SEND_DEAD], s.dev_allow_local_urls, s.send_max_attempts,
            s.send_backoff_base_s, s.send_backoff_max_s, s.send_timeout_s,
            retry_period=s.send_retry_period_s, lease_margin=s.send_lease_margin_s)
        save_ctx = SaveContext(self.broker)

        async def inbound_batch(messages: list[ReceivedMessage]) -> list[Output]:
            return await receive_and_write([m.body for m in messages], inbound_ctx)

        async def inbound_one(message: ReceivedMessage) -> list[Output]:
            return await inbound_batch([message])

        async def media_one(message: ReceivedMessage) -> list[Output]:
            return await fetch_media(message.body, message.receive_count, media_ctx)

        async def send_one(message: ReceivedMessage) -> list[Output]:
            return await send(message.body, send_ctx)

        async def save_one(message: ReceivedMessage) -> list[Output]:
            return await save(message.body, save_ctx)

        async def save_batch(messages: list[ReceivedMessage]) -> list[Output]:
            # Results of many sends at once; the tenant's group commit makes them few commits.
            done = await asyncio.gather(*(save(m.body, save_ctx) for m in messages))
            return [output for outputs in done for output in outputs]

        return [
            StageSpec("send", envelopes.OUTBOUND_SEND, (envelopes.OUTBOUND_RESULTS,), send_one,
                      concurrency=s.send_concurrency, wait_seconds=0.5),
            StageSpec("save", envelopes.OUTBOUND_RESULTS, (), save_one, save_batch,
                      concurrency=4, batch=100),
            # 16 batches in flight: at 2,000 webhooks/s (bench/soak.py) 4 left rows waiting on
            # the queue while the worker had CPU to spare (POST -> row p99 ~0.5 s, ~0.2 s with
            # 16). Batches stay at 150: 300 cost the inbound burst ~30 MB of peak RSS.
            StageSpec("inbound", envelopes.INBOUND_RAW, (envelopes.INBOUND_MEDIA,), inbound_one,
                      inbound_batch, concurrency=16, batch=150),
            StageSpec("media", envelopes.INBOUND_MEDIA, (), media_one,
                      concurrency=s.media_concurrency, defer_to=envelopes.INBOUND_RAW,
                      deferred_concurrency=MEDIA_CONCURRENCY_DURING_BURSTS),
        ]

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
        await self.media_store.close()
        self.broker.close()
        self.registry.engine.dispose()


def build_gateway(settings: Settings, *, queue_broker: QueueBroker | None = None,
                  media_store: MediaStore | None = None,
                  provider_client: ProviderClient | None = None) -> Gateway:
    """The gateway of `settings`. The seams take ready adapters instead of those the settings
    name (tests, other hosts); the gateway owns them from then on (`close` closes them)."""
    init_data_dir(settings)
    broker = open_credentials(settings)
    broker.refresh(force=True)
    media_store = media_store if media_store is not None else open_media(settings)
    if queue_broker is None:
        queue_broker = open_queues(settings, media_store)
    queues = {name: queue_broker.queue(spec) for name, spec in queue_specs(settings).items()}
    media_http = DownloadClient()
    send_http = provider_client if provider_client is not None else ProviderClient(
        connections_per_host=max(settings.send_concurrency, 1))
    copier = MediaCopier(media_store, media_http, tmp_dir=settings.data_dir / "tmp",
                         max_bytes=settings.max_media_bytes,
                         allow_local=settings.dev_allow_local_urls, api=send_http)
    limits = SendLimits(settings.pair_burst, settings.pair_interval_s,
                        settings.send_rate_margin)
    set_dead_letter_source(lambda: {name: count for name, queue in queues.items()
                                    if not name.endswith(".dlq")
                                    and (count := queue.count_dead()) is not None})
    return Gateway(settings, broker.registry, broker, queue_broker, queues, media_store,
                   send_http, media_http, copier, limits)
