"""Prometheus metrics shared by every hosting mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WEBHOOKS = Counter("wacloud_webhooks_total", "Webhook requests by provider and result",
                   ["provider", "result"])
STAGE_MESSAGES = Counter("wacloud_stage_messages_total", "Queue messages handled by stage",
                         ["stage", "result"])
STAGE_SECONDS = Histogram("wacloud_stage_seconds", "Time to handle one queue message",
                          ["stage"])
PARKED = Counter("wacloud_parked_total", "Payloads parked for an operator", ["stage"])
INBOUND_REFUSED = Counter(
    "wacloud_inbound_refused_total",
    "Inbound events refused, never stored: the body's signature does not verify with the app "
    "secret of the channel the event routes to", ["provider", "reason"])
META_OTHER_OBJECTS = Counter(
    "wacloud_meta_other_objects_total",
    "Signed Meta webhooks of another product (object other than whatsapp_business_account), "
    "answered 200 and not stored", ["object"])
CREDENTIALS_UNAUTHENTICATED = Counter(
    "wacloud_credentials_unauthenticated_total",
    "Calls to the credentials endpoint without a valid service key (not written to the "
    "audit)", ["via", "outcome"])


class _DeadLetters(Collector):
    """`wacloud_dead_letters{queue}`: messages in each queue's dead-letter queue, read at every
    scrape from the source the gateway registers (nothing when none is)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("wacloud_dead_letters",
                                   "Messages in the dead-letter queue of each queue",
                                   labels=["queue"])
        if self.source is not None:
            try:
                counts = self.source()
            except Exception:  # a scrape must not fail because the queue file is busy
                counts = {}
            for queue, count in sorted(counts.items()):
                family.add_metric([queue], count)
        yield family


DEAD_LETTERS = _DeadLetters()
REGISTRY.register(DEAD_LETTERS)


def set_dead_letter_source(source: Callable[[], Mapping[str, int]] | None) -> None:
    DEAD_LETTERS.source = source


INGEST_BACKPRESSURE = Gauge(
    "wacloud_ingest_backpressure",
    "1 while webhooks are answered 503 + Retry-After (the inbound queue is at "
    "WACLOUD_INBOUND_QUEUE_LIMIT or the data dir's disk under WACLOUD_MIN_FREE_DISK_MB)")


class _QueueLag(Collector):
    """`wacloud_queue_lag_seconds{queue}`: how long the oldest ready message of each queue has
    waited (0 when none waits), read at every scrape from the source the gateway registers."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, float | None]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("wacloud_queue_lag_seconds",
                                   "Seconds the oldest message ready to be received in each "
                                   "queue has waited (0 when none waits)", labels=["queue"])
        if self.source is not None:
            try:
                lags = self.source()
            except Exception:  # a scrape must not fail because the queue file is busy
                lags = {}
            for queue, lag in sorted(lags.items()):
                family.add_metric([queue], lag or 0.0)
        yield family


QUEUE_LAG = _QueueLag()
REGISTRY.register(QUEUE_LAG)


def set_queue_lag_source(source: Callable[[], Mapping[str, float | None]] | None) -> None:
    QUEUE_LAG.source = source
