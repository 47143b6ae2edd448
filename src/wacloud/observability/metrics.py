"""Prometheus metrics shared by every hosting mode.

Counters and histograms are written where the work happens (the HTTP process, stage worker
processes). `wacloud serve` with stage workers turns on prometheus_client's multiprocess mode
(`enable_multiprocess`): every process writes its figures to memory-mapped files in one
directory under the data dir, and the server's `/metrics` (`render`) adds them up, so one
scrape shows the whole gateway. Gauges (queue depth, age of the oldest message, dead letters,
paused channels, workers) are read by the HTTP process at each scrape (`ScrapeGauges`), never
written by workers, so none needs a multiprocess mode.

Labels stay bounded: provider, stage, queue, result and reason kinds are fixed sets; tenant and
channel are bounded by the registry; error codes are cut to a short token (`error_label`).
Phone numbers and message ids are never labels.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WEBHOOKS = Counter("wacloud_webhooks_total", "Webhook requests by provider and result",
                   ["provider", "result"])
STAGE_MESSAGES = Counter("wacloud_stage_messages_total", "Queue messages handled by stage",
                         ["stage", "result"])
STAGE_SECONDS = Histogram("wacloud_stage_seconds", "Time to handle one queue message",
                          ["stage"])
PARKED = Counter("wacloud_parked_total",
                 "Payloads parked for an operator, by stage and kind of reason (`reason_kind`)",
                 ["stage", "reason"])
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


# Seconds: a webhook is answered in milliseconds and stored within a second or so when the
# gateway keeps up; minutes mean a backlog. Sends wait for the provider and for pacing.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)

MESSAGES_STORED = Counter(
    "wacloud_messages_stored_total",
    "Inbound events written to a tenant database by tenant, channel and direction (an echo of "
    "a message sent from the phone is `out`); an event delivered again is counted again",
    ["tenant", "channel", "direction"])
STATUSES_STORED = Counter(
    "wacloud_statuses_stored_total",
    "Delivery receipts (sent, delivered, read, failed ...) written to a tenant database",
    ["tenant", "channel"])
SENDS = Counter(
    "wacloud_sends_total",
    "Send attempts by outcome: accepted, failed, retry (temporary, tried again), paused (the "
    "channel was paused), gave_up (retry period over: dead-lettered), expired",
    ["tenant", "channel", "provider", "result", "error_code"])
INGEST_LAG = Histogram(
    "wacloud_ingest_lag_seconds",
    "From a webhook's acceptance (durably queued, answered 200) to the receive stage taking it",
    ["provider"], buckets=LATENCY_BUCKETS)
INBOUND_LATENCY = Histogram(
    "wacloud_inbound_latency_seconds",
    "End to end, inbound: from the webhook's acceptance to its row stored in the tenant "
    "database", ["tenant"], buckets=LATENCY_BUCKETS)
OUTBOUND_LATENCY = Histogram(
    "wacloud_outbound_latency_seconds",
    "End to end, outbound: from the API submission (the outbox row's creation) to the "
    "provider's acceptance", ["tenant", "provider"], buckets=LATENCY_BUCKETS)

_ERROR_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,24}")


def error_label(code: object) -> str:
    """A provider error code as a label: "" for none, the code when it is a short token
    (Meta's numbers, "timeout", "network" ...), "other" for anything else."""
    if code is None or code == "":
        return ""
    text = str(code)
    return text if _ERROR_LABEL.fullmatch(text) else "other"


def reason_kind(reason: str) -> str:
    """A parked item's reason as a bounded label: the kind, not the text."""
    if reason.startswith("cannot parse"):
        return "unparseable"
    if reason.startswith("no tenant for"):
        return "no_tenant"
    if reason.startswith("the tenant database refused"):
        return "refused_value"
    return "other"


# -- the whole gateway's figures in one scrape ------------------------------------------------

_multiprocess_dir: Path | None = None


def enable_multiprocess(directory: Path, *, clean: bool = True) -> None:
    """Write this process's (and, through the environment, its children's) counters and
    histograms to `directory`, for `render` to add up. `clean` empties it first: figures of a
    previous run are not this run's (called once at `serve` start, before any worker)."""
    global _multiprocess_dir
    if clean and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # prometheus_client picks its value class from the environment at import time; this
    # process imported it already. Series created before now live in memory only: drop them.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    with warnings.catch_warnings():
        # prometheus_client warns that clearing is not implemented in multiprocess mode: it
        # means the files, which are new and empty here; the in-memory series do go.
        warnings.simplefilter("ignore", UserWarning)
        for metric in _OWN:
            metric.clear()
    _multiprocess_dir = directory


def multiprocess_dir() -> Path | None:
    """The directory `enable_multiprocess` chose in this process, or the one inherited from a
    parent `serve` (workers), or None."""
    if _multiprocess_dir is not None:
        return _multiprocess_dir
    inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(inherited) if inherited else None


def process_exited(pid: int) -> None:
    """A worker process ended (or is being replaced): its live gauges go; its counters stay
    in the sums, as Prometheus expects of counters."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


@dataclass
class GaugeSnapshot:
    """The gauges read at one scrape by the HTTP process."""

    queue_depth: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, state)
    queue_oldest: dict[str, float] = field(default_factory=dict)
    queue_lag: dict[str, float] = field(default_factory=dict)
    # 1 while ingest answers webhooks 503 (backpressure); None where no ingest runs.
    ingest_backpressure: int | None = None
    channels_paused: list[tuple[str, str, str, bool]] = field(default_factory=list)
    workers: list[tuple[str, bool, int]] = field(default_factory=list)  # stages, alive, restarts


class ScrapeGauges(Collector):
    def __init__(self, snapshot: GaugeSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        depth = GaugeMetricFamily(
            "wacloud_queue_depth", "Messages in each queue by state: visible (ready), "
            "in_flight (being handled), delayed (backing off or paced)",
            labels=["queue", "state"])
        for (queue, state), count in sorted(snap.queue_depth.items()):
            depth.add_metric([queue, state], count)
        yield depth
        oldest = GaugeMetricFamily(
            "wacloud_queue_oldest_age_seconds", "Age of the oldest message still in each "
            "queue (any state, dead letters apart); 0 when the queue is empty",
            labels=["queue"])
        for queue, age in sorted(snap.queue_oldest.items()):
            oldest.add_metric([queue], age)
        yield oldest
        lag = GaugeMetricFamily(
            "wacloud_queue_lag_seconds", "Seconds the oldest message ready to be received in "
            "each queue has waited (0 when none waits): how far behind its stage is",
            labels=["queue"])
        for queue, seconds in sorted(snap.queue_lag.items()):
            lag.add_metric([queue], seconds)
        yield lag
        if snap.ingest_backpressure is not None:
            yield GaugeMetricFamily(
                "wacloud_ingest_backpressure", "1 while webhooks are answered 503 + Retry-After "
                "(the inbound queue at WACLOUD_INBOUND_QUEUE_LIMIT or the data dir's disk under "
                "WACLOUD_MIN_FREE_DISK_MB), else 0", value=snap.ingest_backpressure)
        paused = GaugeMetricFamily(
            "wacloud_channel_paused", "1 while a channel is paused (token or account "
            "problem: its messages wait), else 0", labels=["tenant", "channel", "provider"])
        for tenant, channel, provider, is_paused in snap.channels_paused:
            paused.add_metric([tenant, channel, provider], 1 if is_paused else 0)
        yield paused
        alive = GaugeMetricFamily("wacloud_stage_worker_up", "1 while the stage worker "
                                  "process runs", labels=["stages"])
        restarts = GaugeMetricFamily("wacloud_stage_worker_restarts",
                                     "Times `serve` restarted the stage worker",
                                     labels=["stages"])
        for stages, is_alive, count in snap.workers:
            alive.add_metric([stages], 1 if is_alive else 0)
            restarts.add_metric([stages], count)
        yield alive
        yield restarts


def render(snapshot: GaugeSnapshot) -> bytes:
    """The `/metrics` text: every process's counters and histograms (summed over the worker
    processes in multiprocess mode), this process's runtime figures, and the gauges."""
    directory = multiprocess_dir()
    if directory is None:
        base = generate_latest(REGISTRY)
    else:
        registry = CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(directory))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(DEAD_LETTERS)
        base = generate_latest(registry)
    gauges = CollectorRegistry(auto_describe=True)
    gauges.register(ScrapeGauges(snapshot))
    return base + generate_latest(gauges)


def metric_names(text: str) -> set[str]:
    """The metric family names of an exposition text (for tests of dashboards and rules)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


_OWN: Iterable[Counter | Histogram] = (
    WEBHOOKS, STAGE_MESSAGES, STAGE_SECONDS, PARKED, INBOUND_REFUSED, META_OTHER_OBJECTS,
    CREDENTIALS_UNAUTHENTICATED, MESSAGES_STORED, STATUSES_STORED, SENDS, INGEST_LAG,
    INBOUND_LATENCY, OUTBOUND_LATENCY)
