"""What the provider said is kept and visible, through a real `wacloud serve`: group messages
and answers into the group, business-scoped user ids, older voice notes, damaged media files,
and webhook-level errors shown by `wacloud notices`."""

from __future__ import annotations

import hashlib
import json
import uuid

from tests.e2e.conftest import Harness, fixture, wait_for
from tests.e2e.payloads import attach_meta_media, meta_messages, retarget_meta
from wacloud.testing.webhooks import meta_envelope


def test_group_message_keeps_its_group_and_the_answer_goes_to_the_group(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    payload = retarget_meta(fixture("meta", "group_text"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    said = meta_messages(payload)[0]
    group = f"{said['group_id']}{uuid.uuid4().hex[:6]}"
    said["group_id"] = group
    assert harness.post_meta(payload, channel.app_secret).status_code == 200

    [row] = harness.wait_rows(tenant, 1)
    assert (row["group_id"], row["from"]) == (group, said["from"])
    listed = harness.cli("messages", "--tenant", tenant, "--json")
    assert listed.returncode == 0, listed.stderr
    [shown] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert shown["group_id"] == group

    answer = harness.submit(key, {"channel": channel.key, "to": group,
                                  "recipient_type": "group", "type": "text",
                                  "text": {"body": "Abre sim, das 9h às 13h"},
                                  "reply_to": said["id"]})
    assert answer.status_code == 201, answer.text
    assert answer.json()["recipient_type"] == "group"
    row_id = answer.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    [sent] = harness.fake.sent_to(group)
    assert sent.body["recipient_type"] == "group" and sent.body["to"] == group
    assert sent.body["context"] == {"message_id": said["id"]}
    assert not harness.fake.sent_to(said["from"])

    status = fixture("meta", "status_group_sent")["entry"][0]["changes"][0]["value"][
        "statuses"][0]
    status.update(id=rows[row_id]["provider_message_id"], recipient_id=group)
    receipt = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", None, [status])
    assert harness.post_meta(receipt, channel.app_secret).status_code == 200
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 4)
    [out] = harness.rows(tenant, "out")
    assert (out["group_id"], out["recipient_type"]) == (group, "group")


def test_bsuid_recipient_is_sent_as_recipient_and_takes_receipts_and_replies(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    bsuid = f"BR.{uuid.uuid4().int % 10**16:016d}"
    answer = harness.submit(key, {"channel": channel.key, "recipient": bsuid, "type": "text",
                                  "text": {"body": "Seu pedido saiu"}})
    assert answer.status_code == 201, answer.text
    assert answer.json()["to"] == bsuid
    row_id = answer.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 3)
    wamid = rows[row_id]["provider_message_id"]
    [sent] = harness.fake.sent_to(bsuid)
    assert sent.body["recipient"] == bsuid and "to" not in sent.body

    status = fixture("meta", "status_bsuid_delivered")["entry"][0]["changes"][0]["value"][
        "statuses"][0]
    status.update(id=wamid, recipient_user_id=bsuid)
    receipt = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", None, [status])
    assert harness.post_meta(receipt, channel.app_secret).status_code == 200
    harness.wait_outbox(tenant, lambda rows: rows[row_id]["status"] == 5)

    reply = retarget_meta(fixture("meta", "bsuid_reply"), channel.key, channel.waba_id or "",
                          uuid.uuid4().hex[:6])
    message = meta_messages(reply)[0]
    message["from_user_id"] = bsuid
    message["context"]["id"] = wamid
    reply["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"] = bsuid
    assert harness.post_meta(reply, channel.app_secret).status_code == 200
    [row] = harness.wait_rows(tenant, 1)
    assert (row["from"], row["contact"]["user_id"], row["reply_to"]) == (bsuid, bsuid, wamid)
    assert row["contact"]["wa_id"] is None


def test_older_voice_type_gets_its_media_copied(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "voice"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    media = next(iter(attach_meta_media(payload, harness.fake).values()))
    assert harness.post_meta(payload, channel.app_secret).status_code == 200
    [row] = harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"] is not None
                              and rows[0]["media"]["status"] == "stored")
    assert row["type"] == "voice" and row["content"]["voice"] is True
    assert row["media"]["sha256"] == media.sha256_hex
    assert row["media"]["key"].endswith(".ogg")
    stored = harness.gateway.data_dir / "media" / row["media"]["key"]
    assert stored.read_bytes() == media.read_bytes()


def test_damaged_media_fails_after_its_attempts_naming_the_webhook_hash(
        harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "document"), channel.key, channel.waba_id or "",
                            uuid.uuid4().hex[:6])
    media = next(iter(attach_meta_media(payload, harness.fake).values()))
    harness.fake.damage_media(media.id)
    damaged = bytearray(media.read_bytes())
    damaged[0] ^= 0xFF
    assert harness.post_meta(payload, channel.app_secret).status_code == 200

    [row] = harness.wait_rows(tenant, 1, timeout=30, predicate=lambda rows: rows[0]["media"]
                              is not None and rows[0]["media"]["status"] == "failed")
    error = row["media"]["error"]
    assert error.startswith(f"sha256 mismatch: webhook said {media.sha256_b64}, file is "
                            f"{hashlib.sha256(bytes(damaged)).hexdigest()}"), error
    assert "gave up after" in error
    assert row["media"]["key"] is None
    assert not any((harness.gateway.data_dir / "media").rglob(
        f"{hashlib.sha256(bytes(damaged)).hexdigest()}*"))


def test_webhook_level_errors_are_shown_by_the_notices_command(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    payload = retarget_meta(fixture("meta", "value_errors"), channel.key, channel.waba_id or "")
    marker = uuid.uuid4().hex
    payload["entry"][0]["changes"][0]["value"]["errors"][0]["error_data"]["details"] = marker
    assert harness.post_meta(payload, channel.app_secret).status_code == 200

    def shown() -> list[dict[str, object]] | None:
        result = harness.cli("notices", "--tenant", tenant, "--json")
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        return lines or None

    [notice] = wait_for(shown, timeout=30, message="notice listed")
    assert (notice["channel"], notice["field"]) == (channel.key, "messages")
    assert notice["errors"] == [{"code": "130429", "reason": "Rate limit hit"}]
    assert json.dumps(notice["raw"]).count(marker) == 1
