"""Outbound through a real gateway: outbox rows and API submissions reach the fake provider in
each provider's shape, within limits, with retries, pauses and receipts handled."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import Harness, wait_for
from wacloud.domain.model import Provider
from wacloud.testing.webhooks import meta_envelope

IMAGE = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 100

META_MESSAGES: list[tuple[str, dict[str, Any]]] = [
    ("text", {"body": "Seu pedido saiu: https://loja.example/r/1", "preview_url": True}),
    ("image", {"link": "https://cdn.example.com/p.jpg", "caption": "Produto"}),
    ("image", {"id": "1037543291543636"}),
    ("video", {"link": "https://cdn.example.com/v.mp4"}),
    ("audio", {"id": "1037543291543637"}),
    ("document", {"link": "https://cdn.example.com/nf.pdf", "filename": "NF-8812.pdf"}),
    ("sticker", {"id": "1037543291543638"}),
    ("template", {"name": "pedido_enviado", "language": {"code": "pt_BR"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "Maria"}]}]}),
    ("interactive", {"type": "button", "body": {"text": "Confirma?"}, "action": {"buttons": [
        {"type": "reply", "reply": {"id": "yes", "title": "Sim"}}]}}),
    ("interactive", {"type": "list", "body": {"text": "Escolha"}, "action": {
        "button": "Horários", "sections": [{"title": "Amanhã", "rows": [
            {"id": "s9", "title": "09:00"}]}]}}),
    ("reaction", {"message_id": "wamid.HBgNABC=", "emoji": "👍"}),
    ("location", {"latitude": -23.5614, "longitude": -46.6559, "name": "Loja"}),
    ("contacts", {"contacts": [{"name": {"formatted_name": "Suporte", "first_name": "Suporte"},
                                "phones": [{"phone": "+551140001234", "type": "WORK"}]}]}),
]
# The API takes Meta's own list form too.
META_CONTACTS_LIST = [
    {"name": {"formatted_name": "Vendas"}, "phones": [{"phone": "+551140001235"}]},
]


def accepted(rows: dict[int, dict[str, Any]]) -> bool:
    return all(r["status"] == 3 for r in rows.values())


def test_every_meta_type_reaches_the_provider_in_meta_shape(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    to = f"55119{uuid.uuid4().int % 10**8:08d}"
    row_ids: list[int] = []
    for kind, content in META_MESSAGES:
        answer = harness.submit(key, {"channel": channel.key, "to": to, "type": kind,
                                      kind: content, "reply_to": "wamid.QUOTED"})
        assert answer.status_code == 201, answer.text
        row_ids.append(answer.json()["id"])
    rows = harness.wait_outbox(tenant, lambda rows: len(rows) == len(META_MESSAGES)
                               and accepted(rows))
    sent = [s for s in harness.fake.sent if s.sender == channel.key]
    assert [s.body["type"] for s in sent] == [k for k, _ in META_MESSAGES]
    for (kind, content), record in zip(META_MESSAGES, sent, strict=True):
        assert record.body["messaging_product"] == "whatsapp"
        assert record.body["to"] == to
        assert record.body[kind] == (content["contacts"] if kind == "contacts" else content)
    assert sent[0].body["context"] == {"message_id": "wamid.QUOTED"}
    ids = {r["provider_message_id"] for r in rows.values()}
    assert ids == {s.message_id for s in sent}
    read_back = harness.client.get(f"/v1/messages/{row_ids[0]}",
                                   headers={"Authorization": f"Bearer {key}"}).json()
    assert read_back["reply_to"] == "wamid.QUOTED"


def test_mark_as_read_and_api_reads_back_the_row(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    answer = harness.submit(key, {"channel": channel.key, "type": "read",
                                  "read": {"message_id": "wamid.IN1"}})
    row_id = answer.json()["id"]
    wait_for(lambda: harness.client.get(f"/v1/messages/{row_id}", headers={
        "Authorization": f"Bearer {key}"}).json()["status_code"] == 3)
    read = [s for s in harness.fake.sent if s.sender == channel.key]
    assert read[0].body == {"messaging_product": "whatsapp", "status": "read",
                            "message_id": "wamid.IN1"}


def test_whapi_types_reach_whapi_endpoints(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.WHAPI)
    to = "5511987654321"
    messages = [
        ("text", {"body": "Olá"}),
        ("image", {"link": "https://cdn.example.com/p.jpg", "caption": "Produto"}),
        ("document", {"link": "https://cdn.example.com/nf.pdf", "filename": "NF.pdf"}),
        ("audio", {"link": "https://cdn.example.com/a.ogg", "voice": True}),
        ("location", {"latitude": -23.5, "longitude": -46.6, "name": "Loja"}),
        ("contacts", {"contacts": [{"name": {"formatted_name": "Suporte"},
                                    "phones": [{"phone": "+551140001234"}]}]}),
    ]
    for kind, content in messages:
        harness.insert_outbox(tenant, channel.key, to, kind, content)
    harness.wait_outbox(tenant, lambda rows: len(rows) == len(messages) and accepted(rows))
    sent = [s for s in harness.fake.sent if s.sender == channel.key]
    paths = [s.path for s in sent]
    assert paths == ["/messages/text", "/messages/image", "/messages/document",
                     "/messages/voice", "/messages/location", "/messages/contact"]
    assert sent[0].body["body"] == "Olá" and sent[0].body["to"] == to
    assert sent[1].body["media"] == "https://cdn.example.com/p.jpg"
    assert "BEGIN:VCARD" in sent[5].body["vcard"]


def test_chakra_media_link_is_rehosted_then_sent_through_the_pass_through(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.CHAKRA)
    path = harness.fake.add_file(f"{uuid.uuid4().hex}.jpg", IMAGE, "image/jpeg")
    link = harness.fake_url + path
    harness.insert_outbox(tenant, channel.key, "5511987654321", "image",
                          {"link": link, "caption": "Comprovante"})
    harness.insert_outbox(tenant, channel.key, "5511987654321", "text", {"body": "oi"})
    harness.wait_outbox(tenant, lambda rows: len(rows) == 2 and accepted(rows))
    sent = [s for s in harness.fake.sent if s.sender == channel.key]
    assert [s.body["type"] for s in sent] == ["image", "text"]
    image = sent[0].body["image"]
    assert image["link"] != link and "/chakra-public-media/" in image["link"]
    assert httpx.get(image["link"]).content == IMAGE
    assert sent[0].path.startswith(f"/v1/ext/plugin/whatsapp/{channel.key}/api/")


def test_order_per_recipient_holds_with_many_recipients(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant, mps=1000)
    recipients = [f"55219{n:08d}" for n in range(20)]
    for n in range(10):
        for to in recipients:
            harness.insert_outbox(tenant, channel.key, to, "text", {"body": f"{to}-{n}"})
    harness.wait_outbox(tenant, lambda rows: len(rows) == 200 and accepted(rows), timeout=40)
    for to in recipients:
        bodies = [s.body["text"]["body"] for s in harness.fake.sent_to(to)]
        assert bodies == [f"{to}-{n}" for n in range(10)]


def test_rate_limit_per_number_is_never_exceeded(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant, mps=10)
    for n in range(35):
        harness.insert_outbox(tenant, channel.key, f"55319{n:08d}", "text", {"body": str(n)})
    harness.wait_outbox(tenant, lambda rows: len(rows) == 35 and accepted(rows), timeout=30)
    assert harness.fake.max_rate_per_sender(1.0)[channel.key] <= 10


def test_throughput_error_is_retried_once_more_and_ends_accepted(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55419{uuid.uuid4().int % 10**8:08d}"
    harness.fake.script(to, times=1, status=429, error_code=130429)
    row_id = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "retry me"})
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    attempts = [s for s in harness.fake.sent_to(to)]
    assert [s.status for s in attempts] == [429, 200]
    assert rows[row_id]["attempts"] == 2
    assert rows[row_id]["provider_message_id"] == attempts[1].message_id


def test_permanent_error_fails_with_its_reason(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55519{uuid.uuid4().int % 10**8:08d}"
    harness.fake.script(to, times=1, status=400, error_code=131026,
                        error_message="Message undeliverable")
    row_id = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "nope"})
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == -100)
    assert rows[row_id]["error_code"] == "131026"
    assert "undeliverable" in rows[row_id]["error_reason"].lower()
    assert len(harness.fake.sent_to(to)) == 1


def test_expired_token_pauses_the_channel_and_resume_sends_the_waiting(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55619{uuid.uuid4().int % 10**8:08d}"
    harness.fake.script(channel.key, times=1, status=401, error_code=190,
                        error_message="Error validating access token")
    first = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "one"})
    wait_for(lambda: harness.registry.channel_by_id(channel.id).paused, message="pause")
    second = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "two"})
    rows = harness.wait_outbox(tenant, lambda rows: rows[first]["status"] == 0)
    assert "190" in (rows[first]["error_code"] or "")
    assert "190" in (harness.registry.channel_by_id(channel.id).pause_reason or "")
    assert rows[second]["status"] == 0  # waits, does not fail
    resumed = harness.cli("channel", "resume", str(channel.id))
    assert resumed.returncode == 0, resumed.stderr
    harness.wait_outbox(tenant, lambda rows: rows[first]["status"] == 3
                        and rows[second]["status"] == 3)
    bodies = [s.body["text"]["body"] for s in harness.fake.sent_to(to) if s.accepted]
    assert bodies == ["one", "two"]


def test_stale_reservation_is_reclaimed_and_sent(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55719{uuid.uuid4().int % 10**8:08d}"
    # A collector that died between claim and queue left this row reserved long ago.
    old = datetime.now(UTC) - timedelta(hours=1)
    row_id = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "stuck"},
                                   status=1, reserved_at=old, updated_at=old)
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3, timeout=40)
    assert len(harness.fake.sent_to(to)) == 1


def test_a_message_never_passes_an_earlier_one_still_in_the_outbox(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55729{uuid.uuid4().int % 10**8:08d}"
    # The earlier message is held by a collector that is slow to queue it (a fresh
    # reservation, reclaimed only after the lease); the later one is free to go.
    now = datetime.now(UTC)
    first = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "one"},
                                  status=1, reserved_at=now, updated_at=now)
    second = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "two"})
    harness.wait_outbox(tenant, lambda rows: rows[second]["error_code"] == "order",
                        message="the later message waiting for the earlier one")
    harness.wait_outbox(tenant, lambda rows: rows[first]["status"] == 3
                        and rows[second]["status"] == 3, timeout=40)
    bodies = [s.body["text"]["body"] for s in harness.fake.sent_to(to) if s.accepted]
    assert bodies == ["one", "two"]


def test_receipts_move_rows_forward_in_any_order(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    to = f"55819{uuid.uuid4().int % 10**8:08d}"
    row_id = harness.submit(key, {"channel": channel.key, "to": to, "type": "text",
                                  "text": {"body": "rastreio"}}).json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    wamid = rows[row_id]["provider_message_id"]

    def receipt(status: str, ts: int) -> None:
        payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", None,
                                [{"id": wamid, "status": status, "timestamp": str(ts),
                                  "recipient_id": to}])
        assert harness.post_meta(payload, channel.app_secret).status_code == 200

    receipt("read", 30)
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 6)
    receipt("delivered", 20)
    receipt("sent", 10)
    wait_for(lambda: harness.client.get("/readyz").json()["inbound_raw"]["visible"] == 0)
    view = harness.client.get(f"/v1/messages/{row_id}",
                              headers={"Authorization": f"Bearer {key}"}).json()
    assert view["status"] == "read" and view["status_code"] == 6


def test_receipt_that_arrives_before_the_send_result_is_applied(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55919{uuid.uuid4().int % 10**8:08d}"
    wamid = f"wamid.EARLY{uuid.uuid4().hex}"
    # The provider answers slowly with a known id; its delivered receipt arrives meanwhile.
    harness.fake.script(to, times=1, status=200, delay=2.0, message_id=wamid)
    row_id = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "early"})
    wait_for(lambda: harness.outbox(tenant)[row_id]["status"] == 2, message="queued")
    payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", None,
                            [{"id": wamid, "status": "delivered", "timestamp": "20",
                              "recipient_id": to}])
    assert harness.post_meta(payload, channel.app_secret).status_code == 200
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 5)
    assert rows[row_id]["provider_message_id"] == wamid


def test_tenant_api_is_scoped_to_its_tenant(harness: Harness) -> None:
    tenant_a, tenant_b = harness.tenant(), harness.tenant()
    channel_a = harness.meta_channel(tenant_a)
    channel_b = harness.meta_channel(tenant_b)
    key_a = harness.api_key(tenant_a)
    key_b = harness.api_key(tenant_b)
    row_b = harness.submit(key_b, {"channel": channel_b.key, "to": "5511987654321",
                                   "type": "text", "text": {"body": "b"}}).json()["id"]
    assert harness.submit(key_a, {"channel": channel_b.key, "to": "5511987654321",
                                  "type": "text", "text": {"body": "x"}}).status_code == 404
    wrong = harness.client.get(f"/v1/messages/{row_b}", headers={
        "Authorization": f"Bearer {key_a}"})
    if wrong.status_code == 200:  # same id exists in tenant A: it must be A's own row
        assert wrong.json()["channel"] == channel_a.key
    assert harness.submit("not-a-key", {"channel": channel_a.key}).status_code == 401
    bad = harness.submit(key_a, {"channel": channel_a.key, "to": "1", "type": "text",
                                 "text": {}})
    assert bad.status_code == 422 and "text.body" in bad.json()["error"]


def test_pair_limit_answer_slows_only_that_recipient(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    slow, fast = "5511900000001", "5511900000002"
    harness.fake.script(slow, times=1, status=400, error_code=131056)
    first = harness.insert_outbox(tenant, channel.key, slow, "text", {"body": "s1"})
    harness.insert_outbox(tenant, channel.key, slow, "text", {"body": "s2"})
    for n in range(3):
        harness.insert_outbox(tenant, channel.key, fast, "text", {"body": f"f{n}"})
    # The other recipient is not held up by the paced one (4^0 = 1 s backoff at least).
    wait_for(lambda: len([s for s in harness.fake.sent_to(fast) if s.accepted]) == 3,
             message="fast recipient served")
    assert not [s for s in harness.fake.sent_to(slow) if s.accepted]
    rows = harness.wait_outbox(tenant, lambda rows: all(r["status"] == 3 for r in rows.values()))
    assert rows[first]["attempts"] == 2
    assert [s.body["text"]["body"] for s in harness.fake.sent_to(slow) if s.accepted] == [
        "s1", "s2"]


def test_attempts_run_out_to_the_dead_letter_queue_and_replay(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55129{uuid.uuid4().int % 10**8:08d}"
    harness.fake.script(to, times=4, status=503, error_code=131016)
    row_id = harness.insert_outbox(tenant, channel.key, to, "text", {"body": "persistent"})
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == -100)
    assert "gave up after 4 attempts" in rows[row_id]["error_reason"]
    listed = harness.cli("dlq", "list", "--json")
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = [item for item in letters if item["tenant"] == tenant]
    assert [item["row_id"] for item in mine] == [row_id]
    replay = harness.cli("dlq", "replay", mine[0]["id"], "--json")
    assert replay.returncode == 0, replay.stderr
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    assert [s.status for s in harness.fake.sent_to(to)] == [503] * 4 + [200]


def test_legacy_row_with_a_ready_request_gets_credentials_from_the_channel(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    to = f"55139{uuid.uuid4().int % 10**8:08d}"
    body = json.dumps({"messaging_product": "whatsapp", "to": to, "type": "text",
                       "text": {"body": "legado"}})
    url = f"{harness.fake_url}/v23.0/{channel.key}/messages"
    row_id = harness.insert_outbox(
        tenant, channel.key, to, None, None, request_url=url, request_body=body,
        request_headers="Authorization:Bearer leaked-old-token;X-Trace:abc")
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    sent = harness.fake.sent_to(to)
    assert sent[0].body["text"]["body"] == "legado"
    assert rows[row_id]["provider_message_id"] == sent[0].message_id
    recorded = [r for r in harness.fake.requests if r.path.endswith(f"{channel.key}/messages")]
    assert recorded[-1].token_fingerprint == harness.fake.fingerprint("fake-provider-token")
    foreign = harness.insert_outbox(
        tenant, channel.key, to, None, None, request_url="https://example.org/steal",
        request_body=body)
    rows = harness.wait_outbox(tenant, lambda rows: rows[foreign]["status"] == -100)
    assert "host" in rows[foreign]["error_reason"].lower()
