"""Secrets under a running gateway: key rotation with traffic flowing, `channel set-token`
after a 190, and the authenticated, audited `POST /internal/credentials`."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import TOKEN, Harness, make_harness, wait_for
from wacloud.adapters.db.registry.store import credential_audit
from wacloud.bootstrap import secret_box
from wacloud.domain.model import Channel, Provider
from wacloud.security.crypto import read_key_file
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_text


@pytest.fixture
def own_harness(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path, fake_server)


def meta_webhook(harness: Harness, channel: Channel, text: str) -> tuple[str, int]:
    wamid = f"wamid.rot-{uuid.uuid4().hex}"
    message, contact = meta_text("5511987654321", text, wamid)
    payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", [message],
                            None, [contact])
    return wamid, harness.post_meta(payload, channel.app_secret).status_code


class Traffic(threading.Thread):
    """Signed webhooks, one after another, until stopped; remembers what was acknowledged."""

    def __init__(self, harness: Harness, channel: Channel) -> None:
        super().__init__(daemon=True)
        self.harness, self.channel = harness, channel
        self.stop = threading.Event()
        self.acknowledged: list[str] = []
        self.failures: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                wamid, status = meta_webhook(self.harness, self.channel, "during rotation")
            except httpx.HTTPError:
                self.failures.append(-1)
                continue
            (self.acknowledged.append(wamid) if status == 200 else self.failures.append(status))
            self.stop.wait(0.02)  # pacing only: keep the shared machine's load modest


def test_key_rotation_under_a_running_gateway_loses_nothing(own_harness: Harness) -> None:
    harness = own_harness
    data_dir = harness.gateway.data_dir
    own_db = data_dir / f"own-{uuid.uuid4().hex[:6]}.db"
    tenant = f"rot-{uuid.uuid4().hex[:6]}"
    harness.registry.add_tenant(tenant, f"sqlite:///{own_db}")  # a tenant URL to re-encrypt
    meta = harness.meta_channel(tenant)
    whapi = harness.secret_channel(tenant, Provider.WHAPI)
    first, status = meta_webhook(harness, meta, "before rotation")
    assert status == 200
    harness.wait_rows(tenant, 1)
    old_keys = read_key_file(data_dir / "encryption.key")

    traffic = Traffic(harness, meta)
    traffic.start()
    out_before = harness.insert_outbox(tenant, meta.key, "5511900000101", "text",
                                       {"body": "sent around a rotation"})
    rotated = harness.cli("keys", "rotate", "--json")
    out_between = harness.insert_outbox(tenant, whapi.key, "5511900000102", "text",
                                        {"body": "between rotate and prune"})
    pruned = harness.cli("keys", "prune", "--json")
    wait_for(lambda: len(traffic.acknowledged) >= 5, message="traffic after the rotation")
    traffic.stop.set()
    traffic.join(10)

    assert rotated.returncode == 0, rotated.stderr
    report = json.loads(rotated.stdout)
    assert report["reencrypted"]["tenants.db_url"] >= 1
    assert report["reencrypted"]["channels.token"] >= 2
    assert report["reencrypted"]["channels.webhook_secret"] >= 1
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["dropped_keys"] == 1
    keys = read_key_file(data_dir / "encryption.key")
    assert len(keys) == 1 and keys[0] not in old_keys
    for output in (rotated.stdout + rotated.stderr, pruned.stdout + pruned.stderr):
        for secret in (TOKEN, meta.app_secret or "-", whapi.webhook_secret or "-", *old_keys,
                       *keys, str(own_db)):
            assert secret not in output
    # This test process holds a registry too: it needs the new key ring now.
    harness.registry.secrets = secret_box(load_settings(data_dir))

    assert traffic.failures == []
    after, status = meta_webhook(harness, meta, "after rotation")
    assert status == 200
    expected = {first, after, *traffic.acknowledged}
    rows = harness.wait_rows(tenant, len(expected), predicate=lambda rows: expected <= {
        r["provider_message_id"] for r in rows}, timeout=30)
    assert len(rows) == len(expected)
    assert own_db.is_file()  # stored in the tenant's own DB, reached through its URL
    # Both channels still send with their decrypted tokens.
    out_after = harness.insert_outbox(tenant, meta.key, "5511900000103", "text",
                                      {"body": "after the old key is gone"})
    harness.wait_outbox(tenant, lambda rows: all(
        rows[i]["status"] == 3 for i in (out_before, out_between, out_after)))
    # A channel added under the new key alone is routed: the gateway reloaded the key ring.
    fresh = harness.secret_channel(tenant, Provider.WHAPI)
    assert harness.post_secret(fresh, {"messages": [], "channel_id": fresh.key}
                               ).status_code == 200


def test_set_token_resumes_a_channel_paused_by_190_and_sends_what_waited(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    renewed = f"EAAG-renewed-{uuid.uuid4().hex}"
    harness.fake.set_sender_token(channel.key, renewed)  # the old token is now refused (190)
    to = f"55619{uuid.uuid4().int % 10**8:08d}"
    first = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "one"})
    wait_for(lambda: harness.registry.channel_by_id(channel.id).paused, message="pause")
    second = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "two"})
    # The 190 is the row's own error, or (when the collector, not yet aware of the pause,
    # queued it again) the reason of the "paused" error the send stage then answers.
    rows = harness.wait_outbox(tenant, lambda rows: rows[first]["status"] == 0 and "190" in (
        (rows[first]["error_code"] or "") + (rows[first]["error_reason"] or "")))
    assert rows[second]["status"] == 0

    result = harness.cli("channel", "set-token", "--provider", "meta", channel.key,
                         "--token", renewed, "--json")

    assert result.returncode == 0, result.stderr
    assert renewed not in result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert (answer["id"], answer["was_paused"], answer["paused"]) == (channel.id, True, False)
    harness.wait_outbox(tenant, lambda rows: rows[first]["status"] == 3
                        and rows[second]["status"] == 3)
    stored = harness.registry.channel_by_id(channel.id)
    assert (stored.token, stored.paused, stored.pause_reason) == (renewed, False, None)
    accepted = [s for s in harness.fake.sent_to(to) if s.accepted]
    assert [s.body["text"]["body"] for s in accepted] == ["one", "two"]
    sends = [r for r in harness.fake.requests if r.path.endswith(f"{channel.key}/messages")]
    assert sends[-1].token_fingerprint == harness.fake.fingerprint(renewed)


def ask(harness: Harness, key: str | None, body: dict[str, Any] | bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if isinstance(body, bytes):
        return harness.internal.post("/internal/credentials", content=body, headers=headers)
    return harness.internal.post("/internal/credentials", json=body, headers=headers)


def test_internal_credentials_needs_a_service_key_and_audits_every_authenticated_call(
        harness: Harness) -> None:
    tenant = harness.tenant()
    meta = harness.meta_channel(tenant)
    whapi = harness.secret_channel(tenant, Provider.WHAPI)
    body = {"provider": "meta", "id": meta.key}
    # Disabled until a service key exists.
    assert ask(harness, "anything", body).status_code == 404

    created = harness.cli("servicekey", "create", "--label", "e2e-sender", "--json")
    assert created.returncode == 0, created.stderr
    service_key = json.loads(created.stdout)["key"]
    tenant_key = harness.api_key(tenant)
    # Served on the internal listener only: the public webhook port does not know the paths.
    public = harness.client.post("/internal/credentials", json=body,
                                 headers={"Authorization": f"Bearer {service_key}"})
    assert public.status_code == 404 and TOKEN not in public.text
    assert harness.client.get("/metrics").status_code == 404
    assert "wacloud_webhooks_total" in harness.internal.get("/metrics").text

    refused_before = harness.metric("wacloud_credentials_unauthenticated_total", via="http")
    assert ask(harness, None, body).status_code == 401
    assert ask(harness, "wsk_wrong", body).status_code == 403
    assert ask(harness, tenant_key, body).status_code == 403
    # Strangers write nothing into the registry; they are counted instead.
    with harness.registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            credential_audit)).scalar_one() == 0
    assert harness.metric("wacloud_credentials_unauthenticated_total",
                          via="http") == refused_before + 3
    good = ask(harness, service_key, body)
    assert good.status_code == 200 and good.headers["cache-control"] == "no-store"
    answer = good.json()
    db_path = (harness.gateway.data_dir / "tenants" / f"{tenant}.db").resolve()
    assert answer == {
        "tenant": tenant, "channel": meta.key, "channel_id": meta.id, "provider": "meta",
        "phone_number_id": meta.key, "waba_id": meta.waba_id, "base_url": harness.fake_url,
        "graph_version": "v23.0", "paused": False, "pause_reason": None, "token": TOKEN,
        "db_url": f"sqlite:///{db_path}"}
    by_waba = ask(harness, service_key, {"provider": "meta", "id": meta.waba_id or ""})
    assert by_waba.json()["channel"] == meta.key
    assert ask(harness, service_key, {"provider": "whapi", "id": whapi.key}
               ).json()["token"] == whapi.token
    assert ask(harness, service_key, {"provider": "whapi", "id": "NOPE"}).status_code == 404
    assert ask(harness, service_key, b"{not json").status_code == 400
    assert ask(harness, service_key, b" " * (64 * 1024)).status_code == 413

    listed = harness.cli("audit", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["status"], r["outcome"]) for r in rows] == [
        (200, "ok"), (200, "ok"), (200, "ok"), (404, "not_found"), (400, "bad_request")]
    ok = rows[0]
    assert (ok["via"], ok["source"], ok["key_label"], ok["tenant"], ok["channel_key"]) == (
        "http", "127.0.0.1", "e2e-sender", tenant, meta.key)
    assert ok["key_prefix"] == service_key[:12] and ok["lookup_id"] == meta.key
    text_listing = harness.cli("audit")
    assert text_listing.returncode == 0 and "e2e-sender" not in text_listing.stderr
    with harness.registry.engine.connect() as conn:
        stored = json.dumps([dict(r) for r in conn.execute(
            sa.select(credential_audit)).mappings()], default=str)
    for secret in (TOKEN, whapi.token, service_key, tenant_key, meta.app_secret or "-",
                   whapi.webhook_secret or "-"):
        assert secret not in stored
        assert secret not in listed.stdout and secret not in text_listing.stdout

    revoked = harness.cli("servicekey", "revoke", str(json.loads(created.stdout)["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert ask(harness, service_key, body).status_code == 404  # no active key: disabled again
