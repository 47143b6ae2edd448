"""The tenant API of a real `wacloud serve`: a retried POST is one row and one send; bodies
over the size limit are refused with a JSON 413; a validity is kept and shown."""

from __future__ import annotations

import uuid
from datetime import datetime

from tests.e2e.conftest import Harness


def test_a_retried_post_is_one_row_and_one_send(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    to = f"55719{uuid.uuid4().int % 10**8:08d}"
    body = {"channel": channel.key, "to": to, "type": "text", "text": {"body": "OTP 4821"},
            "ttl_s": 600}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"otp-{to}"}
    first = harness.client.post("/v1/messages", json=body, headers=headers)
    again = harness.client.post("/v1/messages", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: all(r["status"] == 3
                                                        for r in rows.values()))
    assert list(rows) == [first.json()["id"]]
    late = harness.client.post("/v1/messages", json=body, headers=headers)
    assert late.status_code == 200 and late.json()["status"] == "accepted"
    assert len(harness.fake.sent_to(to)) == 1
    view = harness.client.get(f"/v1/messages/{first.json()['id']}",
                              headers={"Authorization": f"Bearer {key}"}).json()
    assert datetime.fromisoformat(view["expires_at"]) == datetime.fromisoformat(
        first.json()["expires_at"])


def test_a_body_over_the_limit_is_a_json_413(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    answer = harness.client.post("/v1/messages", headers={"Authorization": f"Bearer {key}"},
                                 json={"channel": channel.key, "to": "5511987654321",
                                       "type": "text", "text": {"body": "x" * 70_000}})
    assert answer.status_code == 413 and "65536" in answer.json()["error"]
    bad = harness.client.post("/v1/messages", headers={"Authorization": f"Bearer {key}"},
                              content=b"\xff\xfe not utf-8")
    assert bad.status_code == 400 and bad.json()["error"] == "the body is not UTF-8"
    assert harness.outbox(tenant) == {}
