"""The admin API of a real `wacloud serve`: a message sent through the tenant API goes out
through the pipeline to the fake provider, its receipts come back as webhooks, and the admin
API finds it, with its whole timeline, and the channel's health; `/openapi.json` is served."""

from __future__ import annotations

import copy
import time
import uuid

from tests.e2e.conftest import Harness, fixture, wait_for
from tests.e2e.payloads import retarget_meta
from wacloud.adapters.db.registry.api_keys import create_api_key


def test_a_sent_message_is_found_with_its_timeline(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    admin_key = create_api_key(harness.registry, tenant=None, admin=True)[1]
    admin = {"Authorization": f"Bearer {admin_key}"}
    wait_for(lambda: harness.client.get("/admin/v1/tenants", headers=admin).status_code == 200,
             message="admin key visible")
    to = f"55719{uuid.uuid4().int % 10**8:08d}"
    sent = harness.submit(key, {"channel": channel.key, "to": to, "type": "text",
                                "text": {"body": "Seu pedido saiu"}})
    assert sent.status_code == 201, sent.text
    row_id = sent.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["provider_message_id"])
    wamid = rows[row_id]["provider_message_id"]

    for status in ("status_sent", "status_delivered", "status_read"):
        payload = retarget_meta(fixture("meta", status), channel.key, channel.waba_id or "")
        receipt = copy.deepcopy(payload)
        entry = receipt["entry"][0]["changes"][0]["value"]["statuses"][0]
        entry["id"], entry["timestamp"] = wamid, str(int(time.time()))
        assert harness.post_meta(receipt, channel.app_secret).status_code == 200
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 6, message="read")

    page = harness.client.get(f"/admin/v1/tenants/{tenant}/messages", headers=admin,
                              params={"contact": to, "direction": "out"})
    assert page.status_code == 200, page.text
    [found] = page.json()["messages"]
    assert (found["id"], found["source"], found["status"]) == (row_id, "outbound", "read")
    detail = harness.client.get(f"/admin/v1/tenants/{tenant}/messages/outbound/{row_id}",
                                headers=admin).json()
    steps = [event["status"] for event in detail["timeline"]]
    assert steps[0] == "created" and {"queued", "accepted", "sent", "delivered",
                                      "read"} <= set(steps), steps
    assert detail["attempts"] == 1 and detail["provider_message_id"] == wamid

    def healthy() -> dict[str, object] | None:
        answer = harness.client.get("/admin/v1/channels/health", headers=admin,
                                    params={"tenant": tenant})
        [health] = answer.json()
        return health if health["last_inbound_at"] else None

    health = wait_for(healthy, message="the receipts noted as the channel's last inbound")
    assert health["sent"] == 1 and health["errors"] == 0 and not health["paused"]
    queues = harness.client.get("/admin/v1/queues", headers=admin).json()
    assert {q["name"] for q in queues} >= {"inbound.raw", "outbound.send"}
    document = harness.client.get("/openapi.json").json()
    assert "/admin/v1/tenants/{tenant}/messages/{source}/{id}" in document["paths"]
