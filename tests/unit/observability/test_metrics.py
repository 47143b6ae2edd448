"""wacloud.observability.metrics: bounded labels, the gauges read at a scrape, the queue's
oldest-age query, and multiprocess mode: figures of several real processes added up in one
scrape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.observability.metrics import (
    GaugeSnapshot,
    error_label,
    metric_names,
    reason_kind,
    render,
)


@pytest.mark.parametrize(("code", "label"), [
    (None, ""), ("", ""), (131056, "131056"), ("131056", "131056"), ("timeout", "timeout"),
    ("network", "network"), ("x" * 25, "other"), ("5511987654321 failed", "other"),
    ("a\nb", "other"),
])
def test_error_codes_are_short_tokens_or_other(code: object, label: str) -> None:
    assert error_label(code) == label


@pytest.mark.parametrize(("reason", "kind"), [
    ("cannot parse meta webhook: body is not JSON", "unparseable"),
    ("no tenant for meta channel '1065' (account '1022')", "no_tenant"),
    ("the tenant database refused this event: value too long", "refused_value"),
    ("anything else +5511987654321", "other"),
])
def test_parked_reasons_become_a_bounded_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_scrape_gauges_are_rendered_with_their_labels() -> None:
    snapshot = GaugeSnapshot(
        queue_depth={("inbound.raw", "visible"): 3, ("inbound.raw", "in_flight"): 1},
        queue_oldest={"inbound.raw": 12.5},
        channels_paused=[("acme", "1065", "meta", True), ("acme", "CH-1", "whapi", False)],
        workers=[("inbound,save", True, 2)])

    text = render(snapshot).decode()

    assert 'wacloud_queue_depth{queue="inbound.raw",state="visible"} 3.0' in text
    assert 'wacloud_queue_depth{queue="inbound.raw",state="in_flight"} 1.0' in text
    assert 'wacloud_queue_oldest_age_seconds{queue="inbound.raw"} 12.5' in text
    assert 'wacloud_channel_paused{channel="1065",provider="meta",tenant="acme"} 1.0' in text
    assert 'wacloud_channel_paused{channel="CH-1",provider="whapi",tenant="acme"} 0.0' in text
    assert 'wacloud_stage_worker_up{stages="inbound,save"} 1.0' in text
    assert 'wacloud_stage_worker_restarts{stages="inbound,save"} 2.0' in text
    names = metric_names(text)
    assert {"wacloud_sends_total", "wacloud_inbound_latency_seconds_bucket",
            "wacloud_outbound_latency_seconds_count", "wacloud_dead_letters"} <= names


async def test_oldest_age_is_none_when_empty_and_grows_with_the_oldest_message(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    try:
        queue = broker.queue(QueueSpec("work"))
        other = broker.queue(QueueSpec("other"))
        assert await queue.oldest_age() is None

        await queue.send(b"first")
        await other.send(b"elsewhere")
        first = await queue.oldest_age()
        assert first is not None and 0.0 <= first < 5.0
        await queue.send(b"second")
        time.sleep(0.05)  # a clock difference to observe, not synchronization
        later = await queue.oldest_age()
        assert later is not None and later >= first + 0.04  # still the first one's age

        received = await queue.receive(10)  # in flight still counts: it is not done
        assert await queue.oldest_age() is not None
        await queue.ack([m.receipt for m in received])
        assert await queue.oldest_age() is None
        assert await other.oldest_age() is not None
    finally:
        await broker.close()


_PARENT = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from wacloud.observability import metrics
    directory = Path(sys.argv[1])
    metrics.enable_multiprocess(directory)
    metrics.MESSAGES_STORED.labels("acme", "CH-1", "in").inc(2)
    metrics.SENDS.labels("acme", "CH-1", "whapi", "failed", "131026").inc()
    metrics.INBOUND_LATENCY.labels("acme").observe(0.2)
    child = subprocess.run([sys.executable, "-c", sys.argv[2]], check=True,
                           capture_output=True, text=True)
    child_pid = int(child.stdout)
    metrics.process_exited(child_pid)  # as `serve` does when a worker exits
    text = metrics.render(metrics.GaugeSnapshot()).decode()
    files = sorted(p.name for p in directory.iterdir())
    print(json.dumps({"text": text, "files": files, "pid": os.getpid(), "child": child_pid}))
""")

_CHILD = textwrap.dedent("""
    import os
    from wacloud.observability import metrics  # PROMETHEUS_MULTIPROC_DIR inherited from the parent
    metrics.MESSAGES_STORED.labels("acme", "CH-1", "in").inc(3)
    metrics.MESSAGES_STORED.labels("acme", "CH-1", "out").inc()
    metrics.INBOUND_LATENCY.labels("acme").observe(0.3)
    print(os.getpid())
""")


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not in:\n{text}")


def test_multiprocess_scrape_adds_up_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left by a previous run")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}

    done = subprocess.run([sys.executable, "-c", _PARENT, str(directory), _CHILD],
                          capture_output=True, text=True, env=env, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    text = result["text"]
    stored = ('wacloud_messages_stored_total{channel="CH-1",direction="in",tenant="acme"}')
    assert _value(text, stored) == 5.0  # 2 in the parent + 3 in the child
    assert _value(text, stored.replace('"in"', '"out"')) == 1.0
    assert _value(text, 'wacloud_sends_total{channel="CH-1",error_code="131026",'
                        'provider="whapi",result="failed",tenant="acme"}') == 1.0
    assert _value(text, 'wacloud_inbound_latency_seconds_count{tenant="acme"}') == 2.0
    assert _value(text, 'wacloud_inbound_latency_seconds_sum{tenant="acme"}') == \
        pytest.approx(0.5)
    # The previous run's file is gone; the exited child's counters stay in the sums.
    assert "counter_999999.db" not in result["files"]
    assert f"counter_{result['child']}.db" in result["files"]
    # The server's own runtime figures are there too.
    assert "process_resident_memory_bytes" in text


def test_every_label_is_of_a_bounded_kind() -> None:
    """No phone number, message id or free text can become a label: every metric's labels
    come from this list (tenant and channel are bounded by the registry)."""
    from wacloud.observability import metrics
    bounded = {"provider", "result", "stage", "reason", "object", "via", "outcome", "tenant",
               "channel", "direction", "error_code"}
    for metric in metrics._OWN:
        assert set(metric._labelnames) <= bounded, metric
