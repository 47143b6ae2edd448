"""LGPD erasure against a running `wacloud serve`: webhooks of two contacts are stored (with
their media copied), then one contact is exported and erased through the CLI while the gateway
keeps running."""

from __future__ import annotations

import json
import uuid

from tests.e2e.conftest import Harness
from tests.e2e.payloads import media_bytes
from wacloud.testing.webhooks import meta_envelope, meta_media, meta_text

MARIA, JOAO = "5511987654321", "5521912345678"


def test_erase_one_contact_through_the_cli(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    run = uuid.uuid4().hex[:8]
    messages, contacts, files = [], [], {}
    for who in (MARIA, JOAO):
        text, contact = meta_text(who, f"meu pedido {who}", f"wamid.t-{who}-{run}")
        media = harness.fake.add_media(media_bytes("image/jpeg"), mime_type="image/jpeg",
                                       provider="meta")
        files[who] = media
        messages += [text, meta_media(who, "image", media.id, "image/jpeg", media.sha256_b64,
                                      f"wamid.i-{who}-{run}", caption=f"foto {who}")]
        contacts.append(contact)
    # One webhook carries both people, as Meta batches do; then a receipt for each.
    batch = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", messages,
                          contacts=contacts)
    assert harness.post_meta(batch, channel.app_secret).status_code == 200
    receipts = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", statuses=[
        {"id": f"wamid.out-{who}-{run}", "status": "delivered", "timestamp": "1750857386",
         "recipient_id": who} for who in (MARIA, JOAO)])
    assert harness.post_meta(receipts, channel.app_secret).status_code == 200
    rows = harness.wait_rows(tenant, 4, predicate=lambda rows: all(
        r["media"] is None or r["media"]["status"] == "stored" for r in rows))
    media_dir = harness.gateway.data_dir / "media"
    keys = {r["from"]: r["media"]["key"] for r in rows if r["media"]}
    assert all((media_dir / key).is_file() for key in keys.values())

    exported = harness.cli("privacy", "export", "--tenant", tenant, "--contact",
                           "+55 11 98765-4321")
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert {m["provider_message_id"] for m in data["messages"]} == {
        f"wamid.t-{MARIA}-{run}", f"wamid.i-{MARIA}-{run}"}
    assert [m["key"] for m in data["media"]] == [keys[MARIA]]
    assert JOAO not in exported.stdout

    erased = harness.cli("privacy", "erase", "--tenant", tenant, "--contact",
                         "+55 11 98765-4321", "--json")
    assert erased.returncode == 0, erased.stderr
    report = json.loads(erased.stdout)
    assert (report["messages"], report["status_events"], report["media_objects"]) == (2, 1, 1)
    assert MARIA not in erased.stdout + erased.stderr

    left = harness.rows(tenant)
    assert {r["from"] for r in left} == {JOAO} and len(left) == 2
    assert not (media_dir / keys[MARIA]).exists()
    assert (media_dir / keys[JOAO]).read_bytes() == files[JOAO].read_bytes()
    with harness.broker.tenant_store(tenant).engine.connect() as conn:
        receipts_left = conn.exec_driver_sql("SELECT recipient FROM status_events").all()
    assert receipts_left == [(JOAO,)]

    # The gateway keeps working: a new message of Maria after the erasure is stored again.
    text, contact = meta_text(MARIA, "voltei", f"wamid.back-{run}")
    back = meta_envelope(channel.key, channel.waba_id or "", "5511940001234", [text],
                         contacts=[contact])
    assert harness.post_meta(back, channel.app_secret).status_code == 200
    harness.wait_rows(tenant, 3)
