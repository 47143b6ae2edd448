"""Meta webhooks through a real `wacloud serve` process into tenant SQLite databases."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import Harness, fixture, wait_for
from tests.e2e.payloads import attach_meta_media, meta_messages, retarget_meta
from wacloud.adapters.db.tenant import tables as tables
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text

MESSAGE_FIXTURES = [
    "text", "image", "video", "audio_voice_reply", "document", "sticker", "location",
    "contacts", "interactive_button_reply", "interactive_list_reply", "interactive_nfm_reply",
    "button", "reaction", "order", "system", "unsupported", "unknown", "referral",
]
EXTENSIONS = {"image/jpeg": ".jpg", "video/mp4": ".mp4", "audio/ogg": ".ogg",
              "application/pdf": ".pdf", "image/webp": ".webp", "image/png": ".png"}


def test_every_message_type_is_stored_once_with_its_content(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    expected: dict[str, str] = {}
    media_by_id = {}
    for name in MESSAGE_FIXTURES:
        payload = retarget_meta(fixture("meta", name), channel.key, channel.waba_id or "",
                                suffix=uuid.uuid4().hex[:6])
        media_by_id.update(attach_meta_media(payload, harness.fake))
        for message in meta_messages(payload):
            expected[message["id"]] = message["type"]
        assert harness.post_meta(payload, channel.app_secret).status_code == 200

    rows = harness.wait_rows(tenant, len(expected), predicate=lambda rows: all(
        r["media"] is None or r["media"]["status"] == "stored" for r in rows))
    assert {r["provider_message_id"]: r["type"] for r in rows} == expected
    by_id = {r["provider_message_id"]: r for r in rows}
    for wamid, media in media_by_id.items():
        stored = by_id[wamid]["media"]
        assert stored["sha256"] == media.sha256_hex
        assert stored["size"] == media.size
        assert stored["key"].startswith(f"{tenant}/{channel.key}/")
        assert stored["key"].endswith(EXTENSIONS[media.mime_type.split(";")[0]])
        path = harness.gateway.data_dir / "media" / stored["key"]
        assert path.read_bytes() == media.read_bytes()
    # Type-specific content is normalized, not only kept raw.
    kinds = {r["type"]: r for r in rows}
    assert kinds["location"]["content"]["latitude"] is not None
    interactive = [r["content"] for r in rows if r["type"] == "interactive"]
    assert {c["interactive_type"] for c in interactive} == {"button_reply", "list_reply",
                                                            "nfm_reply"}
    assert all(c["reply_id"] for c in interactive if c["interactive_type"] != "nfm_reply")
    assert kinds["reaction"]["content"]["message_id"]
    voice = next(r for r in rows if r["type"] == "audio")
    assert voice["content"]["voice"] is True and voice["reply_to"]
    unsupported = kinds["unsupported"]
    assert unsupported["error"]["code"] == "131051"


def test_batch_for_two_tenants_lands_each_message_in_its_own_tenant(harness: Harness) -> None:
    tenant_a, tenant_b = harness.tenant(), harness.tenant()
    channel_a = harness.meta_channel(tenant_a, app_secret="shared-app-secret-1")
    channel_b = harness.meta_channel(tenant_b, app_secret="shared-app-secret-1")
    payload = fixture("meta", "batch_two_tenants")
    suffix = uuid.uuid4().hex[:6]
    # Entry 0 belongs to tenant A's number, entry 1 to tenant B's.
    part_a = retarget_meta({"object": payload["object"], "entry": [payload["entry"][0]]},
                           channel_a.key, channel_a.waba_id or "", suffix)
    part_b = retarget_meta({"object": payload["object"], "entry": [payload["entry"][1]]},
                           channel_b.key, channel_b.waba_id or "", suffix)
    attach_meta_media(part_a, harness.fake)
    batch = {"object": payload["object"], "entry": part_a["entry"] + part_b["entry"]}
    assert harness.post_meta(batch, "shared-app-secret-1").status_code == 200

    ids_a = {m["id"] for m in meta_messages(part_a)}
    ids_b = {m["id"] for m in meta_messages(part_b)}
    rows_a = harness.wait_rows(tenant_a, len(ids_a))
    rows_b = harness.wait_rows(tenant_b, len(ids_b))
    assert {r["provider_message_id"] for r in rows_a} == ids_a
    assert {r["provider_message_id"] for r in rows_b} == ids_b
    assert all(r["channel"] == channel_a.key for r in rows_a)
    assert all(r["channel"] == channel_b.key for r in rows_b)


def test_same_webhook_twice_and_same_message_in_two_webhooks_leave_one_row(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    first, contact = meta_text("5511987654321", "oi", f"wamid.dup-{uuid.uuid4().hex}")
    second, _ = meta_text("5511987654321", "tudo bem?", f"wamid.dup-{uuid.uuid4().hex}")
    body = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", [first], None,
                         [contact])
    for _ in range(3):
        assert harness.post_meta(body, channel.app_secret).status_code == 200
    both = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", [first, second],
                         None, [contact])
    assert harness.post_meta(both, channel.app_secret).status_code == 200
    rows = harness.wait_rows(tenant, 2)
    # Let the last webhooks drain before counting: the raw queue must be empty.
    wait_for(lambda: harness.client.get("/readyz").json()["inbound_raw"]["visible"] == 0)
    rows = harness.wait_rows(tenant, 2)
    assert sorted(r["text"] for r in rows) == ["oi", "tudo bem?"]


def insert_outbound(harness: Harness, tenant: str, channel: str, wamid: str) -> int:
    now = datetime.now(UTC)
    engine = harness.broker.tenant_store(tenant).engine
    with engine.begin() as conn:
        result = conn.execute(tables.outbound_messages.insert().values(
            channel=channel, recipient="5511987654321", type="text",
            content={"body": "Seu pedido saiu"}, status=3, provider_message_id=wamid,
            attempts=1, created_at=now, updated_at=now))
        return int(result.inserted_primary_key[0])


def status_payload(channel_key: str, waba: str, wamid: str, status: str, ts: int
                   ) -> dict[str, object]:
    entry: dict[str, object] = {"id": wamid, "status": status, "timestamp": str(ts),
                                "recipient_id": "5511987654321"}
    if status == "failed":
        entry["errors"] = [{"code": 131047, "title": "Re-engagement message"}]
    return meta_envelope(channel_key, waba, "5511940001234", None, [entry])


def outbound_status(harness: Harness, tenant: str, row_id: int) -> int:
    engine = harness.broker.tenant_store(tenant).engine
    with engine.connect() as conn:
        return int(conn.execute(sa.select(tables.outbound_messages.c.status).where(
            tables.outbound_messages.c.id == row_id)).scalar_one())


def history(harness: Harness, tenant: str, wamid: str) -> list[str]:
    engine = harness.broker.tenant_store(tenant).engine
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(tables.status_events.c.status).where(
            tables.status_events.c.provider_message_id == wamid)).scalars())


def test_statuses_out_of_order_only_move_forward(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    wamid = f"wamid.out-{uuid.uuid4().hex}"
    row_id = insert_outbound(harness, tenant, channel.key, wamid)
    waba = channel.waba_id or ""
    for status, ts in (("read", 30), ("delivered", 20), ("sent", 10), ("failed", 40)):
        harness.post_meta(status_payload(channel.key, waba, wamid, status, ts),
                          channel.app_secret)
    wait_for(lambda: len(history(harness, tenant, wamid)) == 4, message="4 receipts")
    assert history(harness, tenant, wamid) == ["delivered", "failed", "read", "sent"]
    assert outbound_status(harness, tenant, row_id) == 6  # read; never back to delivered


def test_status_before_the_message_is_known_is_applied_when_it_appears(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    wamid = f"wamid.early-{uuid.uuid4().hex}"
    waba = channel.waba_id or ""
    harness.post_meta(status_payload(channel.key, waba, wamid, "delivered", 20),
                      channel.app_secret)
    wait_for(lambda: history(harness, tenant, wamid) == ["delivered"], message="receipt kept")
    # The message becomes known (a later issue's save stage does this through the same call).
    row_id = insert_outbound(harness, tenant, channel.key, wamid)
    store = harness.broker.tenant_store(tenant)
    with store.engine.begin() as conn:
        store.apply_known_receipts(conn, channel.key, [wamid])
    assert outbound_status(harness, tenant, row_id) == 5  # delivered


def test_bad_or_missing_signature_is_401_and_stores_nothing(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    other = harness.meta_channel(harness.tenant())
    message, contact = meta_text("5511987654321", "forged", f"wamid.forged-{uuid.uuid4().hex}")
    payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", [message],
                            None, [contact])
    assert harness.post_meta(payload, None).status_code == 401
    assert harness.post_meta(payload, "not-the-app-secret").status_code == 401
    # Another tenant's app secret cannot sign for this tenant's number.
    assert harness.post_meta(payload, other.app_secret).status_code == 401
    tampered = dumps(payload)
    headers = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert harness.client.post("/webhooks/meta", content=tampered,
                               headers=headers).status_code == 401
    good, _ = meta_text("5511987654321", "real", f"wamid.real-{uuid.uuid4().hex}")
    harness.post_meta(meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                    [good], None, [contact]), channel.app_secret)
    rows = harness.wait_rows(tenant, 1)
    assert [r["text"] for r in rows] == ["real"]


def test_oversized_body_is_413(harness: Harness) -> None:
    channel = harness.meta_channel(harness.tenant())
    big = b'{"object":"whatsapp_business_account","entry":[],"pad":"' + b"x" * (300 * 1024) + b'"}'
    assert harness.post_meta(big, channel.app_secret).status_code == 413


def test_verify_handshake(harness: Harness) -> None:
    channel = harness.meta_channel(harness.tenant())
    ok = harness.client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": channel.verify_token,
        "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = harness.client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"})
    assert bad.status_code == 403


def test_unknown_channel_is_parked_then_replayed_after_the_channel_is_added(
        harness: Harness) -> None:
    known = harness.meta_channel(harness.tenant(), app_secret="one-app-for-all")
    new_number, new_waba = f"1077{uuid.uuid4().int % 10**11:011d}", "1099887766"
    message, contact = meta_text("5511987654321", "olá?", f"wamid.orphan-{uuid.uuid4().hex}")
    payload = meta_envelope(new_number, new_waba, "5511940009999", [message], None, [contact])
    # Signed by the Meta app that serves every tenant: accepted, and parked (not dropped).
    assert harness.post_meta(payload, "one-app-for-all").status_code == 200
    parked = wait_for(lambda: [p for p in harness.parked() if p.channel_key == new_number],
                      message="parked item")
    assert "no tenant" in parked[0].reason and new_number in parked[0].reason
    listed = harness.cli("parked", "--json")
    assert listed.returncode == 0
    assert any(json.loads(line)["id"] == parked[0].id for line in listed.stdout.splitlines())

    tenant = harness.tenant()
    harness.meta_channel(tenant, phone_number_id=new_number, waba_id=new_waba,
                         app_secret="one-app-for-all")
    replay = harness.cli("parked", "replay", "--all", "--json")
    assert replay.returncode == 0, replay.stderr
    assert parked[0].id in json.loads(replay.stdout)["replayed"]
    rows = harness.wait_rows(tenant, 1)
    assert rows[0]["text"] == "olá?" and rows[0]["channel"] == new_number
    assert known.key not in {r["channel"] for r in rows}


def test_a_parked_body_is_not_replayed_into_a_channel_of_another_app(
        harness: Harness) -> None:
    harness.meta_channel(harness.tenant(), app_secret="app-one")
    number, waba = f"1078{uuid.uuid4().int % 10**11:011d}", "1099887700"
    message, contact = meta_text("5511987654321", "de quem?", f"wamid.other-{uuid.uuid4().hex}")
    payload = meta_envelope(number, waba, "5511940009999", [message], None, [contact])
    assert harness.post_meta(payload, "app-one").status_code == 200
    parked = wait_for(lambda: [p for p in harness.parked() if p.channel_key == number],
                      message="parked item")
    assert json.loads(harness.cli("parked", "--json").stdout.splitlines()[-1])["signed_body"]

    # The number turns up in a tenant whose Meta app is not the one that signed the body.
    tenant = harness.tenant()
    harness.meta_channel(tenant, phone_number_id=number, waba_id=waba, app_secret="app-two")
    def refusals() -> int:
        return harness.gateway.log_path.read_text().count("refused 1 meta event(s)")
    seen = refusals()
    replay = harness.cli("parked", "replay", str(parked[0].id), "--json")
    assert replay.returncode == 0, replay.stderr
    wait_for(lambda: refusals() > seen, message="the replayed entry refused")
    assert harness.rows(tenant) == []
    # Nothing parked again either: the entry was checked and refused, not lost in a loop.
    assert [p.id for p in harness.parked() if p.channel_key == number] == []


def test_other_meta_products_are_answered_and_counted_not_parked(harness: Harness) -> None:
    channel = harness.meta_channel(harness.tenant())
    before = harness.metric("wacloud_meta_other_objects_total", object="instagram")
    body = dumps({"object": "instagram", "entry": [
        {"id": "17841400000000000", "time": 1700000000, "changes": [
            {"field": "comments", "value": {"text": f"nice {uuid.uuid4().hex}"}}]}]})
    assert harness.post_meta(body, "not-the-app-secret").status_code == 401  # checked first
    for _ in range(3):
        assert harness.post_meta(body, channel.app_secret).status_code == 200
    assert harness.metric("wacloud_meta_other_objects_total",
                          object="instagram") == before + 3
    wait_for(lambda: harness.client.get("/readyz").json()["inbound_raw"]["visible"] == 0,
             message="inbound queue drained")
    assert not [p for p in harness.parked() if b"17841400000000000" in p.payload.encode()]


def test_signed_but_unparseable_body_is_parked(harness: Harness) -> None:
    channel = harness.meta_channel(harness.tenant())
    body = b'{"object": "whatsapp_business_account", "entry": "not-a-list"}'
    assert harness.post_meta(body, channel.app_secret).status_code == 200
    parked = wait_for(lambda: [p for p in harness.parked() if "not-a-list" in p.payload],
                      message="parked unparseable body")
    assert parked[0].stage == "receive"
    assert "cannot parse" in parked[0].reason


def test_media_download_failing_then_recovering(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "document"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    media = next(iter(attach_meta_media(payload, harness.fake).values()))
    harness.fake.fail_media(media.id, times=2, status=503)
    assert harness.post_meta(payload, channel.app_secret).status_code == 200
    rows = harness.wait_rows(tenant, 1)
    # Stored at once, without waiting for the file ...
    assert rows[0]["media"]["status"] in ("pending", "stored")
    rows = harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"]["status"]
                             == "stored")
    stored = rows[0]["media"]
    assert stored["key"].endswith(".pdf") and stored["sha256"] == media.sha256_hex
    assert stored["filename"] == payload["entry"][0]["changes"][0]["value"]["messages"][0][
        "document"]["filename"]


def test_media_that_cannot_be_copied_fails_with_a_reason_and_the_message_is_kept(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "video"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    media = harness.fake.add_media(size=9 * 1024 * 1024, mime_type="video/mp4")
    video = meta_messages(payload)[0]["video"]
    video["id"], video["sha256"] = media.id, media.sha256_b64
    assert harness.post_meta(payload, channel.app_secret).status_code == 200
    rows = harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"]["status"]
                             == "failed")
    assert "limit" in rows[0]["media"]["error"]
    assert rows[0]["type"] == "video"


def test_media_refetch_command_queues_failed_media_again(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "image"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    media = next(iter(attach_meta_media(payload, harness.fake).values()))
    harness.fake.fail_media(media.id, times=50, status=500)
    harness.post_meta(payload, channel.app_secret)
    harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"]["status"] == "failed",
                      timeout=30)
    harness.fake.fail_media(media.id, times=0)
    result = harness.cli("media", "refetch", "--tenant", tenant, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queued": 1}
    rows = harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"]["status"]
                             == "stored")
    assert rows[0]["media"]["sha256"] == media.sha256_hex


def test_cli_changes_reach_the_running_gateway_and_messages_prints_the_contract(
        harness: Harness, tmp_path: Path) -> None:
    slug = f"cli-{uuid.uuid4().hex[:6]}"
    assert harness.cli("tenant", "add", slug).returncode == 0
    number = f"1088{uuid.uuid4().int % 10**11:011d}"
    added = harness.cli("channel", "add", "meta", "--tenant", slug, "--phone-number-id", number,
                        "--waba-id", "1022000000001", "--display-number", "5511940001234",
                        "--token", "fake-provider-token", "--app-secret", "cli-app-secret",
                        "--verify-token", "cli-verify", "--api-base-url", harness.fake_url,
                        "--json")
    assert added.returncode == 0, added.stderr
    assert "cli-app-secret" not in added.stdout and "fake-provider-token" not in added.stdout
    message, contact = meta_text("5511987654321", "via CLI", f"wamid.cli-{uuid.uuid4().hex}")
    payload = meta_envelope(number, "1022000000001", "5511940001234", [message], None,
                            [contact])

    def accepted_and_routed() -> bool:
        harness.post_meta(payload, "cli-app-secret")
        return bool(harness.rows(slug, "in"))
    wait_for(accepted_and_routed, 10, interval=0.5, message="route via a CLI-added channel")
    out = harness.cli("messages", "--tenant", slug, "--direction", "in", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    for key in ("id", "provider_message_id", "channel", "direction", "type", "from", "to",
                "text", "reply_to", "status", "status_code", "timestamp", "content", "error",
                "media"):
        assert key in row
    assert row["from"] == "5511987654321" and row["text"] == "via CLI"
    assert row["channel"] == number and row["direction"] == "in"


@pytest.mark.parametrize("name", ["account_update", "value_errors", "template_status_update"])
def test_other_meta_fields_are_kept_as_notices(harness: Harness, name: str) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", name), channel.key, channel.waba_id or "")
    assert harness.post_meta(payload, channel.app_secret).status_code == 200
    engine = harness.broker.tenant_store(tenant).engine

    def notices() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(
                tables.notices)).scalar_one())
    wait_for(notices, message="a notice row")
