"""Acknowledged webhooks are never stranded: a tenant database that is down or locked for longer
than the usual retry budget loses nothing, and a value the database refuses parks only its own
event."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Harness, make_harness, wait_for
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.settings import load_settings
from wacloud.stages import envelopes
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_text

TOO_BIG = "9" * 25  # fits no SQL INTEGER


def dead_letters(harness: Harness) -> list[dict[str, object]]:
    listed = harness.cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_refused_value_parks_only_its_event(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    tag = uuid.uuid4().hex[:8]
    good_1, _ = meta_text("5511987650001", "primeira", f"wamid.ok1-{tag}")
    bad, contact = meta_text("5511987650002", "data impossível", f"wamid.bad-{tag}")
    bad["timestamp"] = TOO_BIG
    good_2, _ = meta_text("5511987650003", "terceira", f"wamid.ok2-{tag}")
    status = {"id": f"wamid.st-{tag}", "status": "delivered", "timestamp": TOO_BIG,
              "recipient_id": "5511987650004"}
    payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                            messages=[good_1, bad, good_2], statuses=[status],
                            contacts=[contact])
    assert harness.post_meta(payload, channel.app_secret).status_code == 200

    rows = harness.wait_rows(tenant, 2)
    assert sorted(r["provider_message_id"] for r in rows) == [f"wamid.ok1-{tag}",
                                                              f"wamid.ok2-{tag}"]
    parked = wait_for(lambda: (items := [p for p in harness.parked()
                                         if p.channel_key == channel.key]) and len(items) == 2
                      and items, message="both refused events parked")
    assert all(p.stage == "write" and "refused" in p.reason and "OverflowError" in p.reason
               for p in parked)
    payloads = " ".join(p.payload for p in parked)
    assert f"wamid.bad-{tag}" in payloads and f"wamid.st-{tag}" in payloads
    assert f"wamid.ok1-{tag}" not in payloads
    assert not dead_letters(harness)
    # Kept with the signed webhook: a replay passes the signature check again and reaches
    # the database (which refuses it again, so it is parked again, not dropped or refused).
    assert all(p.raw_body and p.signature for p in parked)
    replay = harness.cli("parked", "replay", str(parked[0].id))
    assert replay.returncode == 0, replay.stderr
    wait_for(lambda: [p for p in harness.parked() if p.channel_key == channel.key
                      and p.id > parked[-1].id and "refused" in p.reason],
             message="the replayed event parked again by the database's refusal")


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory,
          fake_server: FakeProviderServer) -> Iterator[Harness]:
    # Today's budget: two receives, about 3-6 s; database retries every second at most. Each
    # try waits ~3 s for the tenant store (its migration retries): the messages' visibility
    # must outlast that, or a second copy is handed out while the first is still being tried.
    yield from make_harness(tmp_path_factory.mktemp("flaky"), fake_server, {
        "WACLOUD_QUEUE_MAX_RECEIVES": "2", "WACLOUD_DB_RETRY_MAX_DELAY_S": "1",
        "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "30"})


def test_a_tenant_database_down_longer_than_the_retry_budget_loses_nothing(
        flaky: Harness) -> None:
    tenant = flaky.tenant()
    channel = flaky.meta_channel(tenant)
    # The database goes away: its file replaced by a directory SQLite cannot open. A fresh
    # gateway process has no connection to it left over.
    flaky.gateway.stop()
    db = flaky.gateway.data_dir / "tenants" / f"{tenant}.db"
    away = db.with_name(db.name + ".away")
    away.mkdir(parents=True)
    for path in db.parent.glob(db.name + "*"):
        if path != away:
            shutil.move(path, away / path.name)
    db.mkdir()
    log_start = flaky.gateway.log_path.stat().st_size
    flaky.gateway.start()

    tag = uuid.uuid4().hex[:8]
    expected = set()
    for n in range(5):
        messages = []
        for k in range(2):
            message, contact = meta_text(f"55119876{n}{k:04d}", f"msg {n}/{k}",
                                         f"wamid.down-{tag}-{n}-{k}")
            messages.append(message)
            expected.add(message["id"])
        payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                messages=messages, contacts=[contact])
        assert flaky.post_meta(payload, channel.app_secret).status_code == 200

    def fewest_tries() -> int:
        with flaky.gateway.log_path.open("rb") as handle:
            handle.seek(log_start)
            log = handle.read()
        waits = re.findall(rb"database unavailable .*; message (\d+) waits", log)
        return min(Counter(waits).values()) if len(set(waits)) == 5 else 0

    # Every webhook tried beyond today's two receives, and still nothing dead-lettered.
    wait_for(lambda: fewest_tries() >= 3, timeout=90, message="webhooks retried past the budget")
    ready = flaky.client.get("/readyz").json()
    assert set(ready["dead_letters"].values()) == {0}, ready

    db.rmdir()  # the database is back
    for path in away.iterdir():
        shutil.move(path, db.parent / path.name)
    away.rmdir()

    rows = flaky.wait_rows(tenant, len(expected), timeout=60)
    assert {r["provider_message_id"] for r in rows} == expected
    assert not dead_letters(flaky)
    assert set(flaky.client.get("/readyz").json()["dead_letters"].values()) == {0}
    metrics = flaky.internal.get("/metrics").text
    assert 'wacloud_dead_letters{queue="inbound.raw"} 0.0' in metrics


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory,
           fake_server: FakeProviderServer) -> Iterator[Harness]:
    # Today's budget: two receives of 2 s. A write waits for a locked SQLite file up to its busy
    # timeout (WACLOUD_SQLITE_BUSY_TIMEOUT_S, 30 s by default; 6 s here to keep the test short),
    # three times the visibility: only the runner's
    # heartbeat keeps the message from being handed out again meanwhile. The lock also
    # outlasts the send lease (~47 s here) and the collector's stale period (900 s by
    # default; production's outages can be that long): no stale copy may send a row again.
    yield from make_harness(tmp_path_factory.mktemp("locked"), fake_server, {
        "WACLOUD_QUEUE_MAX_RECEIVES": "2", "WACLOUD_DB_RETRY_MAX_DELAY_S": "1",
        "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "2", "WACLOUD_QUEUED_STALE_S": "10",
        "WACLOUD_SQLITE_BUSY_TIMEOUT_S": "6"})


def log_since(harness: Harness, start: int) -> bytes:
    with harness.gateway.log_path.open("rb") as handle:
        handle.seek(start)
        return handle.read()


def tries_by_message(harness: Harness, start: int, stage: str) -> Counter[bytes]:
    """How often each message of `stage` found the database unavailable, from the log."""
    return Counter(re.findall(rb"stage " + stage.encode() +
                              rb": database unavailable .*; message (\d+) waits",
                              log_since(harness, start)))


def lock_tenant_database(harness: Harness, tenant: str) -> sqlite3.Connection:
    """What a tenant's own long job or backup does: hold the write lock of its SQLite file
    (`BEGIN EXCLUSIVE` on a connection of its own) until the caller rolls it back."""
    harness.broker.tenant_store(tenant)  # the file exists, migrated
    holder = sqlite3.connect(harness.gateway.data_dir / "tenants" / f"{tenant}.db",
                             isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def assert_nothing_dead_or_redelivered(harness: Harness, log_start: int) -> None:
    assert not dead_letters(harness)
    ready = harness.internal.get("/readyz").json()
    assert set(ready["dead_letters"].values()) == {0}, ready
    # The heartbeat kept every held message held: none was handed out a second time.
    assert b"no longer held" not in log_since(harness, log_start)


def test_a_tenant_database_locked_longer_than_the_retry_budget_loses_nothing(
        locked: Harness) -> None:
    tenant = locked.tenant()
    channel = locked.meta_channel(tenant)
    log_start = locked.gateway.log_path.stat().st_size
    holder = lock_tenant_database(locked, tenant)
    # Two webhooks of two messages (the tenant's writes wait one after another: each webhook
    # more adds a busy timeout to every round of retries).
    webhooks = 2
    try:
        tag = uuid.uuid4().hex[:8]
        expected = set()
        for n in range(webhooks):
            messages = []
            for k in range(2):
                message, contact = meta_text(f"55119877{n}{k:04d}", f"msg {n}/{k}",
                                             f"wamid.locked-{tag}-{n}-{k}")
                messages.append(message)
                expected.add(message["id"])
            payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                    messages=messages, contacts=[contact])
            assert locked.post_meta(payload, channel.app_secret).status_code == 200

        def fewest_tries() -> int:
            tries = tries_by_message(locked, log_start, "inbound")
            return min(tries.values()) if len(tries) == webhooks else 0

        # The fault lasts until every webhook has waited out the lock twice: each wait alone
        # is longer than today's whole budget (two receives of 2 s).
        wait_for(lambda: fewest_tries() >= 2, timeout=300,
                 message="webhooks waited out the lock twice")
        assert locked.rows(tenant, "in") == []
        assert_nothing_dead_or_redelivered(locked, log_start)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    rows = locked.wait_rows(tenant, len(expected), timeout=60)
    ids = [r["provider_message_id"] for r in rows]
    assert sorted(ids) == sorted(expected), "a webhook stored twice or not at all"
    assert_nothing_dead_or_redelivered(locked, log_start)


def test_send_results_written_while_the_tenant_database_is_locked_end_final(
        locked: Harness) -> None:
    tenant = locked.tenant()
    channel = locked.meta_channel(tenant)
    sends = 2
    # Slow answers: the lock is taken while every send is at the provider.
    script = locked.fake.script(channel.key, times=sends, status=200, delay=3)
    row_ids = [locked.insert_outbox(tenant, channel.key, f"55619877{n:04d}", "text",
                                    {"body": f"locked {n}"}) for n in range(sends)]
    wait_for(lambda: script not in locked.fake.pending_scripts(), timeout=30,
             message="every send at the provider")
    log_start = locked.gateway.log_path.stat().st_size
    holder = lock_tenant_database(locked, tenant)
    try:
        def fewest_tries() -> int:
            tries = tries_by_message(locked, log_start, "save")
            return min(tries.values()) if len(tries) == sends else 0

        # The acceptances cannot be written by the send stage (its outcome waits out the
        # lock, then goes to the save stage), nor by the save stage: twice each.
        wait_for(lambda: fewest_tries() >= 2, timeout=300,
                 message="results waited out the lock twice")
        assert_nothing_dead_or_redelivered(locked, log_start)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    rows = locked.wait_outbox(tenant, lambda rows: all(rows[i]["status"] == 3 for i in row_ids),
                              timeout=60, message="every row accepted")
    sent = [s for s in locked.fake.sent_snapshot() if s.sender == channel.key]
    assert len(sent) == sends, "a row sent twice"
    assert {rows[i]["provider_message_id"] for i in row_ids} == {s.message_id for s in sent}
    assert_nothing_dead_or_redelivered(locked, log_start)


def test_dead_letters_are_counted_in_readyz_and_metrics(flaky: Harness) -> None:
    settings = load_settings(flaky.gateway.data_dir)

    async def one_dead_letter() -> None:
        # What the send stage does when a row runs out of attempts.
        broker = SqliteBroker(settings.queue_path)
        try:
            await broker.queue(QueueSpec(envelopes.OUTBOUND_SEND_DEAD)).send(
                b'{"message": {"tenant": "x", "row_id": 1}}')
        finally:
            await broker.close()

    asyncio.run(one_dead_letter())
    assert flaky.client.get("/readyz").json()["dead_letters"]["outbound.send"] == 1
    assert 'wacloud_dead_letters{queue="outbound.send"} 1.0' in flaky.internal.get(
        "/metrics").text
    [letter] = [d for d in dead_letters(flaky) if d["queue"] == "outbound.send"]
    assert letter["row_id"] == 1
    done = flaky.cli("dlq", "discard", "--queue", "outbound.send", str(letter["id"]),
                     "--reason", "test letter")
    assert done.returncode == 0, done.stderr
    assert flaky.client.get("/readyz").json()["dead_letters"]["outbound.send"] == 0
