"""The admin API over real HTTP: the gateway's own public app (built by `build_gateway` from a
data dir of real SQLite files) under uvicorn, and the fake provider over real HTTP for token
checks. Every answer is checked against the model the OpenAPI document gives for it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Mount

from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.types import utcnow
from wacloud.admin import models as m
from wacloud.bootstrap import build_gateway, init_data_dir, open_registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Contact,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
)
from wacloud.hosting.http import create_apps
from wacloud.hosting.http_protocol import HttpProtocol
from wacloud.hosting.webhooks import WebhookReceiver
from wacloud.settings import load_settings
from wacloud.stages import envelopes
from wacloud.stages.envelopes import RawWebhook
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

TOKEN = "fake-provider-token"
PN = "106540352242922"
PHONE = "5511987654321"


@dataclass
class Admin:
    client: httpx.Client
    registry: Registry
    broker: CredentialsBroker
    data_dir: Path
    admin_key: str
    tenant_key: str
    fake: FakeProvider
    fake_url: str
    loop: asyncio.AbstractEventLoop
    gateway: Any

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def get(self, path: str, model: type[BaseModel] | None = None, many: bool = False,
            **params: Any) -> Any:
        answer = self.client.get(path, params=params, headers=self.headers())
        assert answer.status_code == 200, answer.text
        return checked(answer.json(), model, many)

    def send(self, method: str, path: str, body: Any = None, status: int = 200,
             model: type[BaseModel] | None = None) -> Any:
        answer = self.client.request(method, path, json=body, headers=self.headers())
        assert answer.status_code == status, answer.text
        data = answer.json()
        if status >= 400:
            assert set(data) == {"error"} and data["error"], data
        return checked(data, model) if status < 400 else data

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (the gateway's queues live there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def checked(data: Any, model: type[BaseModel] | None, many: bool = False) -> Any:
    """`data` after checking it has the documented shape."""
    if model is not None:
        for item in data if many else [data]:
            model.model_validate(item)
    return data


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as server:
        yield server


@pytest.fixture
def admin(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Admin]:
    settings = load_settings(tmp_path, dev_allow_local_urls=True)
    init_data_dir(settings)
    registry = open_registry(settings)
    registry.add_tenant("acme")
    admin_key = create_api_key(registry, tenant=None, admin=True)[1]
    tenant_key = create_api_key(registry, tenant="acme")[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    holder: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        gateway = build_gateway(settings)
        app = create_apps(gateway)[0]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                               http=HttpProtocol))  # as `serve` has it
        holder.update(gateway=gateway, server=server, loop=asyncio.get_running_loop())
        ready.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            await gateway.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    deadline = time.monotonic() + 10
    while not holder["server"].started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir, cache_seconds=0)
    fake_server.provider.reset()
    client = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=20)
    try:
        yield Admin(client, registry, broker, tmp_path, admin_key, tenant_key,
                    fake_server.provider, fake_server.base_url, holder["loop"],
                    holder["gateway"])
    finally:
        client.close()
        holder["server"].should_exit = True
        thread.join(15)
        sock.close()
        broker.close()
        registry.engine.dispose()


def meta_channel(admin: Admin, key: str = PN, token: str = TOKEN, **extra: Any) -> Any:
    body = {"provider": "meta", "tenant": "acme", "phone_number_id": key,
            "waba_id": "102290129340398", "display_number": "5511940001234", "token": token,
            "app_secret": "app-secret-" + key, "verify_token": "verify-" + key,
            "api_base_url": admin.fake_url, **extra}
    return admin.send("POST", "/admin/v1/channels", body, 201, m.Channel)


# -- authentication and errors ------------------------------------------------------------


def test_only_admin_keys_in_the_authorization_header_open_the_admin_api(admin: Admin) -> None:
    path = "/admin/v1/tenants"
    assert admin.client.get(path).status_code == 401
    assert admin.client.get(path).json()["error"].startswith("an admin key is required")
    # A key in the URL is never read.
    assert admin.client.get(path, params={"api_key": admin.admin_key,
                                          "token": admin.admin_key}).status_code == 401
    assert admin.client.get(path, headers=admin.headers("wak_unknown")).status_code == 401
    refused = admin.client.get(path, headers=admin.headers(admin.tenant_key))
    assert refused.status_code == 403 and "admin key" in refused.json()["error"]
    assert [t["slug"] for t in admin.get(path, m.Tenant, many=True)] == ["acme"]


def test_every_refusal_is_json(admin: Admin) -> None:
    for method, path, status in (("GET", "/admin/v1/nothing-here", 404),
                                 ("DELETE", "/admin/v1/tenants", 405),
                                 ("GET", "/admin/v1/channels/99", 404),
                                 ("GET", "/admin/v1/channels/abc", 404)):
        answer = admin.client.request(method, path, headers=admin.headers())
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]
    for content, status in ((b"{", 400), (b"\xff", 400), (b"x" * 70_000, 413),
                            (b"[1]", 422), (b'{"slug": "a", "extra": 1}', 422)):
        answer = admin.client.post("/admin/v1/tenants", content=content,
                                   headers=admin.headers())
        assert answer.status_code == status, (content[:20], answer.text)
        assert set(answer.json()) == {"error"}


# -- tenants and channels -------------------------------------------------------------------


def test_tenants_are_added_only_with_a_database_that_works(admin: Admin) -> None:
    created = admin.send("POST", "/admin/v1/tenants", {"slug": "beta"}, 201, m.Tenant)
    assert created["slug"] == "beta" and created["own_db"] is False
    assert (admin.data_dir / "tenants" / "beta.db").exists()
    admin.send("POST", "/admin/v1/tenants", {"slug": "beta"}, 409)
    admin.send("POST", "/admin/v1/tenants", {"slug": "../etc"}, 422)
    # The CLI's rules, in the CLI's words (wacloud.domain.validation).
    bad = admin.send("POST", "/admin/v1/tenants", {"slug": "Bad Slug!"}, 422)
    assert bad["error"].startswith("invalid tenant slug 'Bad Slug!'")
    admin.send("POST", "/admin/v1/tenants", {"slug": "x", "db_url": "not a url"}, 422)
    down = admin.send("POST", "/admin/v1/tenants", {
        "slug": "down", "db_url": "postgresql+psycopg://u:s3cret@127.0.0.1:1/db"}, 422)
    assert "s3cret" not in down["error"]
    slugs = [t["slug"] for t in admin.get("/admin/v1/tenants", m.Tenant, many=True)]
    assert slugs == ["acme", "beta"]  # nothing left of the tenant whose database is down


def test_channels_are_added_with_the_cli_validation_and_never_show_secrets(
        admin: Admin) -> None:
    meta = meta_channel(admin, media_hosts=["cdn.example.com"])
    assert meta["key"] == PN and meta["media_hosts"] == ["cdn.example.com"]
    assert meta["webhook_path"] == "/webhooks/meta"
    whapi = admin.send("POST", "/admin/v1/channels", {
        "provider": "whapi", "tenant": "acme", "channel_id": "MANTIS-1", "token": "whapi-tok",
        "webhook_secret": "whapi-secret"}, 201, m.Channel)
    assert whapi["webhook_path"] == "/webhooks/whapi/MANTIS-1"
    admin.send("POST", "/admin/v1/channels", {
        "provider": "chakra", "tenant": "acme", "plugin_id": "plug-1",
        "phone_number_id": "555", "token": "chakra-tok", "webhook_secret": "chakra-secret"},
        201, m.Channel)
    # What `wacloud channel add` refuses, the API refuses.
    admin.send("POST", "/admin/v1/channels", {"provider": "whapi", "tenant": "acme",
                                              "channel_id": "X", "token": "t"}, 422)
    admin.send("POST", "/admin/v1/channels", {"provider": "telegram", "tenant": "acme"}, 422)
    meta_dup = admin.client.post("/admin/v1/channels", headers=admin.headers(), json={
        "provider": "whapi", "tenant": "acme", "channel_id": "MANTIS-1", "token": "t",
        "webhook_secret": "s"})
    assert meta_dup.status_code == 409
    bad_host = admin.client.post("/admin/v1/channels", headers=admin.headers(), json={
        "provider": "whapi", "tenant": "acme", "channel_id": "M2", "token": "t",
        "webhook_secret": "s", "media_hosts": ["http://[::1"]})
    assert bad_host.status_code == 422, bad_host.text
    bad_url = admin.client.post("/admin/v1/channels", headers=admin.headers(), json={
        "provider": "whapi", "tenant": "acme", "channel_id": "M2", "token": "t",
        "webhook_secret": "s", "api_base_url": "http://[::1"})
    assert bad_url.json()["error"].startswith("invalid API base URL"), bad_url.text
    unknown = admin.client.post("/admin/v1/channels", headers=admin.headers(), json={
        "provider": "whapi", "tenant": "nobody", "channel_id": "M3", "token": "t",
        "webhook_secret": "s"})
    assert unknown.status_code == 404, unknown.text

    listed = admin.client.get("/admin/v1/channels", headers=admin.headers()).text
    for secret in (TOKEN, "app-secret-" + PN, "verify-" + PN, "whapi-tok", "whapi-secret",
                   "chakra-tok", "chakra-secret"):
        assert secret not in listed
    assert len(admin.get("/admin/v1/channels", m.Channel, many=True, tenant="acme")) == 3
    assert admin.client.get("/admin/v1/channels", params={"tenant": "nobody"},
                            headers=admin.headers()).status_code == 404


def test_pause_resume_and_replace_a_token(admin: Admin,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wacloud.admin.api")
    channel = meta_channel(admin)
    path = f"/admin/v1/channels/{channel['id']}"
    paused = admin.send("POST", path + "/pause", {"reason": "checking the number"}, 200,
                        m.Channel)
    assert paused["paused"] and paused["pause_reason"] == "checking the number"
    assert admin.registry.channel_by_id(channel["id"]).paused
    resumed = admin.send("POST", path + "/resume", None, 200, m.Channel)
    assert not resumed["paused"] and resumed["pause_reason"] is None
    admin.send("POST", path + "/pause", {}, 200)
    replaced = admin.send("PUT", path + "/token", {"token": "new-token"}, 200,
                          m.TokenReplaced)
    assert replaced == {"id": channel["id"], "token_replaced": True, "paused": False,
                        "was_paused": True}
    assert admin.registry.channel_by_id(channel["id"]).token == "new-token"
    admin.send("PUT", path + "/token", {"token": ""}, 422)
    changes = [r.getMessage() for r in caplog.records if r.name == "wacloud.admin.api"]
    assert any(f"PUT {path}/token by key" in line for line in changes), changes
    assert "new-token" not in caplog.text and admin.admin_key not in caplog.text
    admin.send("PUT", "/admin/v1/channels/999/token", {"token": "x"}, 404)


def test_a_token_is_tested_against_the_provider(admin: Admin) -> None:
    admin.fake.set_sender_token(PN, "good-token")
    channel = meta_channel(admin, token="good-token")
    path = f"/admin/v1/channels/{channel['id']}/token/test"
    good = admin.send("POST", path, None, 200, m.TokenCheck)
    assert good["ok"] is True and good["details"]["id"] == PN
    admin.send("PUT", f"/admin/v1/channels/{channel['id']}/token", {"token": "stale-token"})
    bad = admin.send("POST", path, None, 200, m.TokenCheck)
    assert bad["ok"] is False and bad["http_status"] == 401 and bad["error_code"] == "190"
    asked = [r for r in admin.fake.requests if r.path == f"/v23.0/{PN}"]
    assert asked and all(r.method == "GET" for r in asked)

    admin.fake.set_whapi_channel("whapi-token", "MANTIS-9")
    whapi = admin.send("POST", "/admin/v1/channels", {
        "provider": "whapi", "tenant": "acme", "channel_id": "MANTIS-9",
        "token": "whapi-token", "webhook_secret": "s", "api_base_url": admin.fake_url}, 201)
    whapi_path = f"/admin/v1/channels/{whapi['id']}/token/test"
    assert admin.send("POST", whapi_path, None, 200, m.TokenCheck)["ok"] is True
    admin.fake.set_whapi_status("whapi-token", "QR")
    qr = admin.send("POST", whapi_path, None, 200, m.TokenCheck)
    assert qr["ok"] is False and "QR" in qr["error"]

    chakra = admin.send("POST", "/admin/v1/channels", {
        "provider": "chakra", "tenant": "acme", "plugin_id": "plug-9",
        "phone_number_id": "556", "token": TOKEN, "webhook_secret": "s",
        "api_base_url": admin.fake_url}, 201)
    chakra_path = f"/admin/v1/channels/{chakra['id']}/token/test"
    assert admin.send("POST", chakra_path, None, 200, m.TokenCheck)["ok"] is True
    admin.send("PUT", f"/admin/v1/channels/{chakra['id']}/token", {"token": "wrong-token"})
    refused = admin.send("POST", chakra_path, None, 200, m.TokenCheck)
    assert refused["ok"] is False and refused["http_status"] == 401
    assert "wrong-token" not in json.dumps(refused)

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    gone = admin.send("POST", "/admin/v1/channels", {
        "provider": "whapi", "tenant": "acme", "channel_id": "GONE", "token": "t",
        "webhook_secret": "s", "api_base_url": dead_url}, 201)
    unreachable = admin.send("POST", f"/admin/v1/channels/{gone['id']}/token/test", None,
                             200, m.TokenCheck)
    assert unreachable["ok"] is False and unreachable["error_code"] == "network"


# -- messages -----------------------------------------------------------------------------


def seed_messages(admin: Admin) -> dict[str, int]:
    store = admin.broker.tenant_store("acme")
    now = utcnow()
    ids: dict[str, int] = {}
    with store.engine.begin() as conn:
        for name, status, minutes, extra in (
                ("read", OutboundStatus.READ, 30,
                 {"provider_message_id": "wamid.READ", "accepted_at": now, "queued_at": now,
                  "read_at": now}),
                ("failed", OutboundStatus.FAILED, 20,
                 {"error_code": "131026", "error_reason": "Message undeliverable",
                  "attempts": 1, "response_excerpt": '{"error":{"code":131026}}'}),
                ("queued", OutboundStatus.QUEUED, 10, {"attempts": 2, "error_code": "130429",
                                                       "error_reason": "Rate limit hit"})):
            result = conn.execute(t.outbound_messages.insert().values(
                channel=PN, recipient=PHONE if name != "queued" else "5511900000000",
                type="text", content={"body": name}, status=status.value,
                created_at=now - timedelta(minutes=minutes), updated_at=now, **extra))
            ids[name] = int(result.inserted_primary_key[0])
    sent_at = int(now.timestamp()) - 60
    store.store_events(
        [InboundMessage(provider=Provider.META, channel_key=PN, provider_message_id="wamid.IN",
                        type="image", sender=PHONE, recipient="5511940001234",
                        contact=Contact(PHONE, "BR.1502576394655843", "Ana"), timestamp=sent_at,
                        media=MediaRef(provider_media_id="m1", status=MediaStatus.FAILED,
                                       error="HTTP 404"))],
        [StatusUpdate(Provider.META, PN, "wamid.READ", s, timestamp=sent_at + i,
                      recipient=PHONE) for i, s in enumerate(("sent", "delivered", "read"))],
        [])
    with store.engine.connect() as conn:
        ids["in"] = int(conn.execute(sa.select(t.messages.c.id)).scalar_one())
    return ids


def test_a_tenants_notices_are_listed_oldest_first(admin: Admin) -> None:
    meta_channel(admin)
    store = admin.broker.tenant_store("acme")
    for n in range(3):
        store.store_events([], [], [ProviderNotice(
            Provider.META, PN, "messages",
            errors=[ProviderError(str(131000 + n), f"webhook-level error {n}")],
            raw={"errors": [{"code": 131000 + n}]})])
    path = "/admin/v1/tenants/acme/notices"
    listed = admin.get(path, m.Notice, many=True)
    assert [x["errors"][0]["code"] for x in listed] == ["131000", "131001", "131002"]
    assert {x["channel"] for x in listed} == {PN}
    latest = admin.get(path, m.Notice, many=True, limit=2)
    assert [x["errors"][0]["reason"] for x in latest] == [
        "webhook-level error 1", "webhook-level error 2"]
    admin.send("GET", "/admin/v1/tenants/nobody/notices", status=404)
    admin.send("GET", path + "?limit=0", status=422)


def test_messages_are_searched_and_paged_with_a_cursor(admin: Admin) -> None:
    meta_channel(admin)
    ids = seed_messages(admin)
    path = "/admin/v1/tenants/acme/messages"
    everything = admin.get(path, m.MessagePage)
    assert [(x["source"], x["id"]) for x in everything["messages"]] == [
        ("messages", ids["in"]), ("outbound", ids["queued"]), ("outbound", ids["failed"]),
        ("outbound", ids["read"])]
    assert everything["next_cursor"] is None

    pages, cursor = [], None
    while True:
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = admin.get(path, m.MessagePage, **params)
        pages += [(x["source"], x["id"]) for x in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [(x["source"], x["id"]) for x in everything["messages"]]

    def found(**params: Any) -> list[int]:
        return [x["id"] for x in admin.get(path, m.MessagePage, **params)["messages"]]

    assert found(direction="in") == [ids["in"]]
    assert found(direction="out", status="failed") == [ids["failed"]]
    assert found(contact="BR.1502576394655843") == [ids["in"]]
    assert found(contact="5511900000000") == [ids["queued"]]
    assert found(channel="other") == []
    since = (utcnow() - timedelta(minutes=25)).isoformat()
    until = (utcnow() - timedelta(minutes=15)).isoformat()
    assert found(direction="out", since=since, until=until) == [ids["failed"]]
    for bad in ({"direction": "sideways"}, {"limit": 0}, {"limit": 501},
                {"cursor": "garbage"}, {"since": "yesterday"}, {"colour": "red"}):
        answer = admin.client.get(path, params=bad, headers=admin.headers())
        assert answer.status_code == 422, (bad, answer.text)
        assert set(answer.json()) == {"error"}
    assert admin.client.get("/admin/v1/tenants/nobody/messages",
                            headers=admin.headers()).status_code == 404


def test_one_message_with_its_timeline(admin: Admin) -> None:
    meta_channel(admin)
    ids = seed_messages(admin)
    base = "/admin/v1/tenants/acme/messages"
    read = admin.get(f"{base}/outbound/{ids['read']}", m.MessageDetail)
    steps = [e["status"] for e in read["timeline"]]
    assert steps[0] == "created"
    assert {"queued", "accepted", "sent", "delivered", "read"} <= set(steps)
    assert steps.count("read") == 1  # the receipt, not also the row's read_at
    assert [r["status"] for r in read["receipts"]] == ["sent", "delivered", "read"]
    failed = admin.get(f"{base}/outbound/{ids['failed']}", m.MessageDetail)
    assert failed["timeline"][-1]["status"] == "failed"
    assert failed["timeline"][-1]["error"] == {"code": "131026",
                                               "reason": "Message undeliverable"}
    assert failed["attempts"] == 1 and "131026" in failed["last_response"]
    inbound = admin.get(f"{base}/messages/{ids['in']}", m.MessageDetail)
    assert [e["status"] for e in inbound["timeline"]] == [
        "sent_by_contact", "received", "media_failed"]
    assert inbound["timeline"][-1]["error"]["reason"] == "HTTP 404"
    for path in (f"{base}/outbound/999", f"{base}/elsewhere/1", f"{base}/outbound/x"):
        assert admin.client.get(path, headers=admin.headers()).status_code == 404


def test_channel_health_counts_the_last_hour(admin: Admin) -> None:
    channel = meta_channel(admin)
    seed_messages(admin)
    admin.send("POST", f"/admin/v1/channels/{channel['id']}/pause", {"reason": "190"})
    [health] = admin.get("/admin/v1/channels/health", m.ChannelHealth, many=True)
    assert health["sent"] == 1 and health["errors"] == 2
    assert health["errors_by_code"] == {"130429": 1, "131026": 1}
    assert health["rate_limit_hits"] == 1
    assert health["paused"] and health["pause_reason"] == "190"
    assert health["last_inbound_at"] is None  # seeded directly, not through the write stage
    at = utcnow()
    admin.registry.touch_inbound([channel["id"]], at)
    [health] = admin.get("/admin/v1/channels/health", m.ChannelHealth, many=True,
                         tenant="acme")
    assert datetime.fromisoformat(health["last_inbound_at"]) == at


# -- queues, dead letters, parked items -------------------------------------------------------


def test_queues_show_depth_age_and_dead_letters(admin: Admin) -> None:
    queues = admin.gateway.queues

    async def fill() -> None:
        await queues[envelopes.INBOUND_MEDIA].send(b'{"tenant": "acme", "message": {}}')
        raw = queues[envelopes.INBOUND_RAW]
        await raw.send(RawWebhook("meta", None, 1.0, b'{"from": "5511987654321"}').encode())
        [letter] = await raw.receive(1)
        await raw.dead_letter(letter.receipt, "could not parse")

    admin.run(fill())
    stats = {q["name"]: q for q in admin.get("/admin/v1/queues", m.QueueStats, many=True)}
    media = stats[envelopes.INBOUND_MEDIA]
    assert media["visible"] == 1 and media["oldest_age_s"] is not None
    assert stats[envelopes.INBOUND_RAW]["dead"] == 1
    assert stats[envelopes.OUTBOUND_SEND]["oldest_age_s"] is None

    letters = admin.get("/admin/v1/dead-letters", m.DeadLetter, many=True)
    assert [(x["queue"], x["reason"]) for x in letters] == [(envelopes.INBOUND_RAW,
                                                             "could not parse")]
    assert PHONE not in json.dumps(letters)  # never the body
    letter_id = letters[0]["id"]
    one = admin.get(f"/admin/v1/dead-letters/inbound.raw.dlq/{letter_id}", m.DeadLetter)
    assert one["id"] == letter_id
    assert admin.client.get("/admin/v1/dead-letters/nowhere/1",
                            headers=admin.headers()).status_code == 404
    admin.send("POST", "/admin/v1/dead-letters/inbound.raw/discard", {"all": True}, 422)
    admin.send("POST", "/admin/v1/dead-letters/inbound.raw/replay", {}, 422)
    replayed = admin.send("POST", "/admin/v1/dead-letters/inbound.raw/replay",
                          {"ids": [letter_id]}, 200, m.Replayed)
    assert replayed["replayed"] == [letter_id]

    async def kill_again() -> str:
        raw = queues[envelopes.INBOUND_RAW]
        [letter] = await raw.receive(1)
        await raw.dead_letter(letter.receipt, "still broken")
        return letter.message_id

    letter_id = admin.run(kill_again())
    discarded = admin.send("POST", "/admin/v1/dead-letters/inbound.raw/discard",
                           {"all": True, "reason": "test data"}, 200, m.Discarded)
    assert discarded["discarded"] == [letter_id] and discarded["reason"] == "test data"
    record = json.loads((admin.data_dir / "dlq-discards.jsonl").read_text().splitlines()[-1])
    assert record["reason"] == "test data" and record["ids"] == [letter_id]
    assert admin.get("/admin/v1/dead-letters", m.DeadLetter, many=True) == []


def test_parked_items_are_inspected_replayed_and_discarded(admin: Admin) -> None:
    first = admin.registry.park(stage="receive", reason="no tenant for meta channel '1'",
                                payload=json.dumps({"entry": []}), provider="meta")
    second = admin.registry.park(stage="receive", reason="not JSON", payload="garbage")
    envelope = RawWebhook("whapi", "MANTIS-1", 1.0, b'{"messages": []}',
                          signature="sha256=abc").encode().decode()
    third = admin.registry.park(stage="receive", reason="unknown channel", payload=envelope)
    shown = admin.get(f"/admin/v1/parked/{third}", m.ParkedDetail)["payload"]
    assert shown == {"provider": "whapi", "channel_key": "MANTIS-1", "received_at": 1.0,
                     "kind": "webhook", "body": {"messages": []}}
    admin.send("POST", "/admin/v1/parked/discard", {"ids": [str(third)], "reason": "test"})
    listed = admin.get("/admin/v1/parked", m.ParkedItem, many=True)
    assert [item["id"] for item in listed] == [first, second]
    detail = admin.get(f"/admin/v1/parked/{first}", m.ParkedDetail)
    assert detail["payload"] == {"entry": []}
    assert admin.client.get("/admin/v1/parked/999", headers=admin.headers()).status_code == 404
    admin.send("POST", "/admin/v1/parked/replay", {"ids": ["999"]}, 404)
    admin.send("POST", "/admin/v1/parked/replay", {"ids": ["x"]}, 422)
    replayed = admin.send("POST", "/admin/v1/parked/replay", {"ids": [str(first)]}, 200,
                          m.Replayed)
    assert replayed["replayed"] == [first]
    assert admin.registry.parked_item(first).replay_count == 1
    depth = admin.get("/admin/v1/queues", m.QueueStats, many=True)
    assert {q["name"]: q["visible"] for q in depth}[envelopes.INBOUND_RAW] == 1
    admin.send("POST", "/admin/v1/parked/discard", {"ids": [str(second)]}, 422)  # no reason
    gone = admin.send("POST", "/admin/v1/parked/discard",
                      {"ids": [str(second)], "reason": "junk from a scanner"}, 200,
                      m.Discarded)
    assert gone["discarded"] == [second]
    assert [i["id"] for i in admin.get("/admin/v1/parked", m.ParkedItem, many=True)] == []
    record = json.loads((admin.data_dir / "parked-discards.jsonl").read_text().splitlines()[-1])
    assert record["reason"] == "junk from a scanner" and "garbage" not in json.dumps(record)


# -- the document ---------------------------------------------------------------------------


def test_the_openapi_document_is_valid_and_covers_every_path(admin: Admin) -> None:
    from openapi_spec_validator import validate

    from wacloud.admin.openapi import ADMIN_PREFIX

    answer = admin.client.get("/openapi.json")  # public: no key needed
    assert answer.status_code == 200
    document = answer.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = document["paths"]
    assert {"post", "get"} <= set(paths["/v1/messages"]) | set(paths["/v1/messages/{id}"])
    post = paths["/v1/messages"]["post"]
    assert {"Idempotency-Key"} <= {p["name"] for p in post["parameters"]}
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert {"text", "template", "media", "group", "bsuid", "validity", "expires_at"} <= set(
        examples)
    # Every admin route the app serves is in the document, with the same methods.
    public = create_apps(admin.gateway)[0]
    assert isinstance(public, WebhookReceiver) and isinstance(public.fallback, Starlette)
    served: set[tuple[str, str]] = set()
    for route in public.fallback.routes:
        if isinstance(route, Mount) and route.path == ADMIN_PREFIX:
            for inner in route.routes:
                for method in inner.methods - {"HEAD"}:
                    path = inner.path.replace(":int", "")
                    served.add((method.lower(), ADMIN_PREFIX + path))
    documented = {(method, path) for path, ops in paths.items() for method in ops
                  if path.startswith(ADMIN_PREFIX)}
    assert served == documented and len(served) >= 20


def test_the_documented_examples_are_accepted_by_the_tenant_api() -> None:
    from wacloud.domain.submission import parse_submission, parse_validity

    for name, example in m.SUBMISSION_EXAMPLES.items():
        data = example["value"]
        submission = parse_submission(data)
        now = datetime(2026, 12, 5, tzinfo=UTC)
        parse_validity(data, now)
        m.MessageSubmission.model_validate(data)
        assert submission.channel == data["channel"], name


def test_bad_input_is_a_4xx_never_a_500(admin: Admin) -> None:
    meta_channel(admin)
    huge = "9" * 30
    early_cursor = base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+14:00",0,1]').decode()
    for method, path, body in (
            ("GET", f"/admin/v1/channels/{huge}", None),
            ("POST", f"/admin/v1/channels/{huge}/pause", {}),
            ("GET", f"/admin/v1/parked/{huge}", None),
            ("GET", f"/admin/v1/tenants/acme/messages/outbound/{huge}", None),
            ("POST", "/admin/v1/parked/replay", {"ids": [huge]}),
            ("POST", "/admin/v1/parked/discard", {"ids": ["٣"], "reason": "x"}),
            ("POST", "/admin/v1/channels/1/pause", {"reason": "a\x00b"}),
            ("POST", "/admin/v1/channels/1/pause", {"reason": "x" * 501}),
            ("POST", "/admin/v1/channels", {
                "provider": "whapi", "tenant": "acme", "channel_id": "x" * 129, "token": "t",
                "webhook_secret": "s"}),
            ("POST", "/admin/v1/channels", {
                "provider": "whapi", "tenant": "acme", "channel_id": "C", "token": "t",
                "webhook_secret": "s", "api_base_url": "http://[::1"}),
            ("POST", "/admin/v1/channels", {
                "provider": "whapi", "tenant": "acme", "channel_id": "C", "token": "t",
                "webhook_secret": "s", "api_base_url": "ftp://files.example"}),
            ("GET", "/admin/v1/tenants/acme/messages?contact=%00", None),
            ("GET", "/admin/v1/tenants/acme/messages?since=0001-01-01T00:00:00%2B14:00", None),
            ("GET", f"/admin/v1/tenants/acme/messages?cursor={early_cursor}", None)):
        answer = admin.client.request(method, path, json=body, headers=admin.headers())
        assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text)
        assert set(answer.json()) == {"error"}, answer.text
    # Nothing was half done by the refusals.
    assert [c["key"] for c in admin.get("/admin/v1/channels", m.Channel, many=True)] == [PN]


def test_the_tenant_api_answers_as_documented(admin: Admin) -> None:
    meta_channel(admin)
    headers = {"Authorization": f"Bearer {admin.tenant_key}", "Idempotency-Key": "k-1"}
    body = dict(m.SUBMISSION_EXAMPLES["validity"]["value"], channel=PN)
    created = admin.client.post("/v1/messages", json=body, headers=headers)
    assert created.status_code == 201, created.text
    m.Submission.model_validate(created.json())
    again = admin.client.post("/v1/messages", json=body, headers=headers)
    assert again.status_code == 200 and again.json() == created.json()
    read = admin.client.get(f"/v1/messages/{created.json()['id']}",
                            headers={"Authorization": f"Bearer {admin.tenant_key}"})
    m.OutboundMessage.model_validate(read.json())
    # The admin key is not a tenant key.
    assert admin.client.post("/v1/messages", json=body,
                             headers=admin.headers()).status_code == 401
