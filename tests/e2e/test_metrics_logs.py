"""The server's `/metrics` shows the stage workers' figures, and the JSON log follows a message
by its trace id: from webhook to stored row, and from API submission to send, result and the
receipt that comes back."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TOKEN, Harness, make_harness, wait_for
from wacloud.hosting.embedded import metrics_directory
from wacloud.observability.logs import mask
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_status, meta_text

SENDER = "5511987654321"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer) -> Iterator[Harness]:
    # One stage worker holds inbound and save (and media once rows are stored);
    # send runs in the server.
    yield from make_harness(tmp_path_factory.mktemp("metrics-logs"), fake_server, {
        "WACLOUD_STAGE_WORKERS": "1", "WACLOUD_SERVER_STAGES": "media,send",
        "WACLOUD_LOG_JSON": "1", "WACLOUD_LOG_LEVEL": "debug"})


def log_lines(harness: Harness) -> list[dict[str, Any]]:
    """The JSON lines the server and its worker wrote (each must be one whole object)."""
    lines = []
    for line in harness.gateway.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def find(harness: Harness, **fields: object) -> list[dict[str, Any]]:
    return [line for line in log_lines(harness)
            if all(line.get(k) == v for k, v in fields.items())]


def post_text(harness: Harness, channel: Any, text: str) -> str:
    wamid = f"wamid.{uuid.uuid4().hex}"
    message, contact = meta_text(SENDER, text, wamid)
    answer = harness.post_meta(meta_envelope(channel.key, channel.waba_id or "",
                                             "5511940001234", [message], contacts=[contact]),
                               channel.app_secret)
    assert answer.status_code == 200, answer.text
    return wamid


def test_server_metrics_count_what_the_worker_stored(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)

    post_text(harness, channel, "hello")
    harness.wait_rows(tenant, 1)

    # Stored by the stage worker process; scraped from the server's internal listener.
    stored = wait_for(lambda: harness.metric("wacloud_messages_stored_total", tenant=tenant,
                                             direction="in") or None,
                      message="the worker's count in the server's /metrics")
    assert stored == 1.0
    assert harness.metric("wacloud_inbound_latency_seconds_count", tenant=tenant) == 1.0
    assert harness.metric("wacloud_ingest_lag_seconds_count", provider="meta") >= 1.0
    assert harness.metric("wacloud_stage_messages_total", stage="inbound", result="ok") >= 1.0
    assert harness.metric("wacloud_stage_worker_up") == 1.0  # the one worker runs
    text = harness.internal.get("/metrics").text
    assert 'wacloud_queue_depth{queue="inbound.raw",state="visible"}' in text
    assert 'wacloud_queue_oldest_age_seconds{queue="inbound.raw"}' in text
    assert (f'wacloud_channel_paused{{channel="{channel.key}",provider="meta",'
            f'tenant="{tenant}"}} 0.0') in text
    assert SENDER not in text
    # Both processes write their files in the gateway's metrics directory.
    directory = metrics_directory(load_settings(harness.gateway.data_dir))
    files = {p.name.rsplit("_", 1)[-1] for p in directory.iterdir()}
    assert len(files) >= 2


def worker_pid(harness: Harness) -> int | None:
    (worker,) = harness.client.get("/readyz").json()["workers"]
    return int(worker["pid"]) if worker["alive"] else None


def test_a_dead_workers_counts_stay_in_the_sums_after_its_restart(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    post_text(harness, channel, "before")
    harness.wait_rows(tenant, 1)
    wait_for(lambda: harness.metric("wacloud_messages_stored_total", tenant=tenant) == 1.0,
             message="the first count")
    first = worker_pid(harness)
    assert first is not None

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: worker_pid(harness) not in (None, first), 30,
             message="the worker restarted by serve")
    assert harness.metric("wacloud_stage_worker_restarts") == 1.0
    assert harness.metric("wacloud_messages_stored_total", tenant=tenant) == 1.0
    post_text(harness, channel, "after")
    harness.wait_rows(tenant, 2, timeout=30)
    wait_for(lambda: harness.metric("wacloud_messages_stored_total", tenant=tenant) == 2.0,
             message="the dead worker's count plus the new one's")


def test_a_webhook_trace_id_reaches_the_stored_row_line(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)

    wamid = post_text(harness, channel, "trace me")
    harness.wait_rows(tenant, 1)

    stored = wait_for(lambda: find(harness, message="message stored", tenant=tenant),
                      message="the stored row's log line")
    assert len(stored) == 1
    line = stored[0]
    assert line["message_id"] == mask(wamid)
    assert line["channel"] == mask(channel.key)
    assert line["stage"] == "inbound" and line["direction"] == "in"
    assert line["level"] == "DEBUG" and line["logger"] == "wacloud.stages.write"
    received = find(harness, message="webhook received", trace_id=line["trace_id"])
    assert len(received) == 1 and received[0]["provider"] == "meta"
    assert len(line["trace_id"]) == 16


def test_an_api_trace_id_follows_the_send_its_result_and_the_receipt(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)

    answer = harness.submit(key, {"channel": channel.key, "to": SENDER, "type": "text",
                                  "text": {"body": "hi"}})
    assert answer.status_code == 201, answer.text
    trace, row_id = answer.headers["X-Trace-Id"], answer.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    pmid = rows[row_id]["provider_message_id"]
    harness.post_meta(meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                    statuses=[meta_status(pmid, "delivered", SENDER)]),
                      channel.app_secret)
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 5)  # delivered

    for message, stage in (("message submitted", "api"), ("send accepted", "send"),
                           ("send result saved", "send")):
        lines = wait_for(lambda m=message: find(harness, message=m, trace_id=trace),
                         message=f"{message!r} with the API's trace id")
        assert lines[0]["stage"] == stage
        assert lines[0]["tenant"] == tenant and lines[0]["message_id"] == str(row_id)
    receipt = wait_for(lambda: find(harness, message="receipt stored", tenant=tenant),
                       message="the receipt's log line")
    assert receipt[0]["outbound_trace_id"] == trace
    assert receipt[0]["status"] == "delivered"
    assert harness.metric("wacloud_sends_total", tenant=tenant, result="accepted") == 1.0
    assert harness.metric("wacloud_outbound_latency_seconds_count", tenant=tenant) == 1.0
    assert harness.metric("wacloud_statuses_stored_total", tenant=tenant) == 1.0


def test_json_log_has_no_secret_and_no_phone_number(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    post_text(harness, channel, "secret check")
    harness.wait_rows(tenant, 1)
    wait_for(lambda: find(harness, message="message stored", tenant=tenant),
             message="the stored row's log line")

    text = Path(harness.gateway.log_path).read_text(errors="replace")
    lines = log_lines(harness)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    for secret in (SENDER, TOKEN, channel.app_secret, channel.verify_token):
        assert secret and secret not in text
