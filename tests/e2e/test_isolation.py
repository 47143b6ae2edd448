"""Tenant isolation and injection through a real gateway.

- A tenant's API key reads and sends only for its own tenant (another tenant's row is 404,
  another tenant's channel is 404), whatever the body claims.
- A webhook writes only into the tenant of the channel it authenticated as: never into
  another tenant's DB, not even a receipt naming another tenant's message.
- SQL in every string field of a webhook or an API submission is stored as text, verbatim.

(`test_outbound.py::test_tenant_api_is_scoped_to_its_tenant` and
`test_inbound_meta.py::test_batch_for_two_tenants_...` cover the basic cases; these add the
strict and hostile ones.)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa

from tests.e2e.conftest import Harness, wait_for
from wacloud.adapters.db.tenant import tables as tables
from wacloud.domain.model import Provider
from wacloud.testing.webhooks import meta_envelope, meta_text

SQL = "'); DROP TABLE messages;--"
SQL2 = "\" OR 1=1; DELETE FROM outbound_messages WHERE '1'='1"


def table_counts(harness: Harness, tenant: str) -> dict[str, int]:
    engine = harness.broker.tenant_store(tenant).engine
    with engine.connect() as conn:
        return {table.name: int(conn.execute(
            sa.select(sa.func.count()).select_from(table)).scalar_one())
            for table in (tables.messages, tables.status_events, tables.outbound_messages,
                          tables.notices)}


def strings(value: Any) -> set[str]:
    """Every string inside a JSON value (its normalized content), however it is nested."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(strings(v) for v in value)) if value else set()
    return set()


def drain(harness: Harness) -> None:
    """Wait until every webhook sent so far went through the pipeline."""
    def idle() -> bool:
        ready = harness.client.get("/readyz").json()
        return bool(ready["inbound_raw"]["visible"] == 0)
    wait_for(idle, message="inbound queue drained")


# -- API keys --------------------------------------------------------------------------------


def test_a_tenant_key_gets_404_for_another_tenants_row_and_channel(harness: Harness) -> None:
    tenant_a, tenant_b = harness.tenant(), harness.tenant()
    channel_a = harness.meta_channel(tenant_a)
    channel_b = harness.meta_channel(tenant_b)
    key_a, key_b = harness.api_key(tenant_a), harness.api_key(tenant_b)
    row_b = harness.submit(key_b, {"channel": channel_b.key, "to": "5511987654321",
                                   "type": "text", "text": {"body": "only b"}}).json()["id"]

    # Tenant A has no outbound rows at all, so B's id cannot be A's own row.
    read = harness.client.get(f"/v1/messages/{row_b}",
                              headers={"Authorization": f"Bearer {key_a}"})
    assert read.status_code == 404
    assert channel_b.key not in read.text and "only b" not in read.text
    assert harness.client.get(f"/v1/messages/{row_b}", headers={
        "Authorization": f"Bearer {key_b}"}).json()["text"] == "only b"
    for weird in ("1%20OR%201=1", "1;DROP%20TABLE%20outbound_messages", "-1", "0x1"):
        assert harness.client.get(f"/v1/messages/{weird}", headers={
            "Authorization": f"Bearer {key_a}"}).status_code == 404

    # Sending with B's channel, or naming B in the body, never reaches B.
    refused = harness.submit(key_a, {"channel": channel_b.key, "to": "5511987654321",
                                     "type": "text", "text": {"body": "from a"}})
    assert refused.status_code in (403, 404)
    claimed = harness.submit(key_a, {"channel": channel_a.key, "to": "5511987654321",
                                     "type": "text", "text": {"body": "claims b"},
                                     "tenant": tenant_b, "tenant_id": 2})
    if claimed.status_code == 201:
        assert harness.outbox(tenant_a)[claimed.json()["id"]]["content"]["body"] == "claims b"
    assert [r["content"]["body"] for r in harness.outbox(tenant_b).values()] == ["only b"]


# -- webhooks --------------------------------------------------------------------------------


def test_a_webhook_for_tenant_a_never_writes_into_tenant_b(harness: Harness) -> None:
    tenant_a, tenant_b = harness.tenant(), harness.tenant()
    meta_a = harness.meta_channel(tenant_a)
    meta_b = harness.meta_channel(tenant_b)
    whapi_a = harness.secret_channel(tenant_a, Provider.WHAPI)
    whapi_b = harness.secret_channel(tenant_b, Provider.WHAPI)
    # B has sent a message; its receipt will be forged through A's channel below.
    wamid_b = f"wamid.B-{uuid.uuid4().hex}"
    harness.fake.script("5511987650099", times=1, status=200, message_id=wamid_b)
    row_b = harness.insert_outbox(tenant_b, meta_b.key, "5511987650099", "text", {"body": "b"})
    harness.wait_outbox(tenant_b, lambda rows: rows[row_b]["status"] == 3)
    before_b = table_counts(harness, tenant_b)

    text, contact = meta_text("5511987650001", "para A", f"wamid.A-{uuid.uuid4().hex}")
    receipt = {"id": wamid_b, "status": "read", "timestamp": str(int(time.time())),
               "recipient_id": "5511987650099"}
    body_a = meta_envelope(meta_a.key, meta_a.waba_id or "", "5511940001234", [text],
                           [receipt], [contact])
    assert harness.post_meta(body_a, meta_a.app_secret).status_code == 200
    # Naming B's number but signed with A's secret: refused, nothing written anywhere.
    body_b = meta_envelope(meta_b.key, meta_b.waba_id or "", "5511940001234", [meta_text(
        "5511987650002", "forjada", f"wamid.X-{uuid.uuid4().hex}")[0]])
    assert harness.post_meta(body_b, meta_a.app_secret).status_code == 401
    # Whapi: the URL names the channel. A body claiming B's channel on A's URL is parked (not
    # routed to B), and A's secret does not open B's URL.
    def whapi_body(channel_id: str, text: str) -> dict[str, Any]:
        return {"channel_id": channel_id, "event": {"type": "messages", "event": "post"},
                "messages": [{"id": f"w-{uuid.uuid4().hex}", "from_me": False,
                              "type": "text", "chat_id": "5521998760001@s.whatsapp.net",
                              "timestamp": int(time.time()), "from": "5521998760001",
                              "text": {"body": text}}]}
    assert harness.post_secret(whapi_a, whapi_body(whapi_a.key, "whapi para A")
                               ).status_code == 200
    claims_b = whapi_body(whapi_b.key, "claims to be for B")
    assert harness.post_secret(whapi_a, claims_b).status_code == 200
    assert harness.post_secret(whapi_b, claims_b,
                               secret=whapi_a.webhook_secret).status_code == 401

    rows_a = harness.wait_rows(tenant_a, 2)
    drain(harness)
    assert sorted(r["text"] for r in harness.rows(tenant_a, "in")) == ["para A", "whapi para A"]
    assert {r["channel"] for r in rows_a} == {meta_a.key, whapi_a.key}
    assert table_counts(harness, tenant_b) == before_b
    assert harness.outbox(tenant_b)[row_b]["status"] == 3  # the forged "read" did not apply
    parked = [p for p in harness.parked() if p.channel_key == whapi_a.key]
    assert len(parked) == 1 and "claims to be for B" in parked[0].payload


def test_a_body_signed_by_tenant_a_naming_b_writes_nothing_into_b(harness: Harness) -> None:
    """Meta signs a body, not an entry: A's app secret must not carry B's entries along."""
    tenant_a, tenant_b = harness.tenant(), harness.tenant()
    meta_a = harness.meta_channel(tenant_a)
    meta_b = harness.meta_channel(tenant_b)
    wamid_b = f"wamid.B-{uuid.uuid4().hex}"
    harness.fake.script("5511987650098", times=1, status=200, message_id=wamid_b)
    row_b = harness.insert_outbox(tenant_b, meta_b.key, "5511987650098", "text", {"body": "b"})
    harness.wait_outbox(tenant_b, lambda rows: rows[row_b]["status"] == 3)
    before_b = table_counts(harness, tenant_b)

    text_a, contact = meta_text("5511987650003", "de A", f"wamid.A-{uuid.uuid4().hex}")
    forged, _ = meta_text("5511987650004", "forjada para B", f"wamid.X-{uuid.uuid4().hex}")
    receipt = {"id": wamid_b, "status": "read", "timestamp": str(int(time.time())),
               "recipient_id": "5511987650098"}
    part_a = meta_envelope(meta_a.key, meta_a.waba_id or "", "5511940001234", [text_a], None,
                           [contact])
    part_b = meta_envelope(meta_b.key, meta_b.waba_id or "", "5511940001234", [forged],
                           [receipt])
    mixed = {"object": "whatsapp_business_account",
             "entry": part_a["entry"] + part_b["entry"]}
    # Answered 200 (the body is A's): A's entry is stored, B's is refused and counted.
    assert harness.post_meta(mixed, meta_a.app_secret).status_code == 200

    harness.wait_rows(tenant_a, 1)
    drain(harness)
    assert [r["text"] for r in harness.rows(tenant_a, "in")] == ["de A"]
    assert table_counts(harness, tenant_b) == before_b
    assert harness.outbox(tenant_b)[row_b]["status"] == 3  # the forged "read" did not apply
    assert not [p for p in harness.parked() if p.channel_key == meta_b.key]
    wait_for(lambda: "refused 2 meta event(s)" in harness.gateway.log_path.read_text(),
             message="the refusal logged")
    log = harness.gateway.log_path.read_text()
    assert (meta_a.app_secret or "-") not in log and (meta_b.app_secret or "-") not in log


# -- injection -------------------------------------------------------------------------------


def test_sql_in_every_string_field_is_stored_verbatim(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    suffix = uuid.uuid4().hex[:6]
    sender = f"5511{SQL}"
    messages: list[dict[str, Any]] = [
        {"from": sender, "id": f"wamid.{SQL}{suffix}-1", "timestamp": str(int(time.time())),
         "type": "text", "text": {"body": SQL2}, "context": {"id": f"wamid.{SQL}",
                                                              "from": SQL}},
        {"from": sender, "id": f"wamid.{SQL}{suffix}-2", "timestamp": str(int(time.time())),
         "type": "location", "location": {"latitude": -23.5, "longitude": -46.6,
                                          "name": SQL, "address": SQL2}},
        {"from": sender, "id": f"wamid.{SQL}{suffix}-3", "timestamp": str(int(time.time())),
         "type": "interactive", "interactive": {"type": "button_reply", "button_reply": {
             "id": SQL, "title": SQL2}}},
    ]
    contacts = [{"profile": {"name": SQL2}, "wa_id": sender}]
    body = meta_envelope(channel.key, channel.waba_id or "", SQL, messages, None, contacts)
    assert harness.post_meta(body, channel.app_secret).status_code == 200
    # An unknown number full of SQL is parked, verbatim, in the registry.
    stray = meta_envelope(f"{SQL}{suffix}", f"{SQL}{suffix}", SQL, [messages[0]])
    assert harness.post_meta(stray, channel.app_secret).status_code == 200
    submitted = harness.submit(key, {"channel": channel.key, "to": "5511987654321",
                                     "type": "text", "text": {"body": SQL},
                                     "client_reference": SQL2, "reply_to": f"wamid.{SQL}"})
    assert submitted.status_code == 201

    rows = {r["provider_message_id"]: r for r in harness.wait_rows(tenant, 3)}
    text = rows[f"wamid.{SQL}{suffix}-1"]
    assert (text["text"], text["from"], text["reply_to"]) == (SQL2, sender, f"wamid.{SQL}")
    assert text["contact"]["name"] == SQL2 and text["contact"]["wa_id"] == sender
    assert {SQL, SQL2} <= strings(rows[f"wamid.{SQL}{suffix}-2"]["content"])  # location
    assert {SQL, SQL2} <= strings(rows[f"wamid.{SQL}{suffix}-3"]["content"])  # button reply
    read = harness.client.get(f"/v1/messages/{submitted.json()['id']}",
                              headers={"Authorization": f"Bearer {key}"}).json()
    assert (read["text"], read["client_reference"]) == (SQL, SQL2)
    assert harness.outbox(tenant)[submitted.json()["id"]]["reply_to"] == f"wamid.{SQL}"
    parked = wait_for(lambda: [p for p in harness.parked() if p.channel_key == f"{SQL}{suffix}"],
                      message="stray payload parked")
    assert SQL in parked[0].payload
    # Every table is still there and holds what it should.
    counts = table_counts(harness, tenant)
    assert counts["messages"] == 3 and counts["outbound_messages"] == 1
    assert harness.registry.tenants()
