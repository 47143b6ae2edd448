"""Whapi and Chakra webhooks through a real gateway: secrets, every type, echoes, media."""

from __future__ import annotations

import uuid

from tests.e2e.conftest import Harness, fixture, wait_for
from tests.e2e.payloads import attach_meta_media, attach_whapi_media, retarget_meta, retarget_whapi
from wacloud.domain.model import Provider

WHAPI_MESSAGES = [
    "text", "audio", "voice", "document", "image_autodownload", "image_no_link", "video",
    "sticker", "location", "contact", "contact_list", "link_preview", "reply_buttons",
    "reply_list", "reaction", "poll", "order", "unknown_type",
]


def test_whapi_every_type_and_media_through_link_or_media_endpoint(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.WHAPI)
    expected: dict[str, str] = {}
    media = {}
    for name in WHAPI_MESSAGES:
        payload = retarget_whapi(fixture("whapi", name), channel.key, uuid.uuid4().hex[:6])
        media.update(attach_whapi_media(payload, harness.fake, harness.fake_url,
                                        token=channel.token))
        for message in payload["messages"]:
            expected[message["id"]] = message["type"]
        assert harness.post_secret(channel, payload).status_code == 200
    rows = harness.wait_rows(tenant, len(expected), predicate=lambda rows: all(
        r["media"] is None or r["media"]["status"] == "stored" for r in rows))
    assert set(expected) == {r["provider_message_id"] for r in rows}
    by_id = {r["provider_message_id"]: r for r in rows}
    for wamid, item in media.items():
        assert by_id[wamid]["media"]["sha256"] == item.sha256_hex
    assert by_id[next(i for i, t in expected.items() if t == "voice")]["content"]["voice"]


def test_whapi_secret_in_query_works_and_wrong_secret_is_401(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.WHAPI)
    payload = retarget_whapi(fixture("whapi", "text"), channel.key, uuid.uuid4().hex[:6])
    assert harness.post_secret(channel, payload, secret="wrong").status_code == 401
    assert harness.post_secret(channel, payload, secret="wrong", in_query=True).status_code == 401
    assert harness.client.post(f"/webhooks/whapi/{channel.key}",
                               content=b"{}").status_code == 401
    assert harness.post_secret(channel, payload, in_query=True).status_code == 200
    rows = harness.wait_rows(tenant, 1)
    assert len(rows) == 1


def test_whapi_echo_is_outgoing_and_takes_a_receipt_that_arrived_first(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.WHAPI)
    suffix = uuid.uuid4().hex[:6]
    status = retarget_whapi(fixture("whapi", "status_read"), channel.key, suffix)
    echo = retarget_whapi(fixture("whapi", "from_me_echo"), channel.key, suffix)
    assert harness.post_secret(channel, status).status_code == 200
    wait_for(lambda: harness.client.get("/readyz").json()["inbound_raw"]["visible"] == 0)
    assert harness.post_secret(channel, echo).status_code == 200
    rows = harness.wait_rows(tenant, 1, direction="out",
                             predicate=lambda rows: rows[0]["status"] == "read")
    assert rows[0]["direction"] == "out"
    assert harness.rows(tenant, "in") == []


def test_chakra_webhook_in_meta_format_with_media_from_chakra(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.secret_channel(tenant, Provider.CHAKRA)
    payload = retarget_meta(fixture("chakra", "image"), "106540352242999", "102290129340777",
                            uuid.uuid4().hex[:6])
    media = attach_meta_media(payload, harness.fake, provider="chakra")
    assert harness.post_secret(channel, payload, secret="nope").status_code == 401
    assert harness.post_secret(channel, payload).status_code == 200
    rows = harness.wait_rows(tenant, 1, predicate=lambda rows: rows[0]["media"]["status"]
                             == "stored")
    assert rows[0]["channel"] == channel.key
    assert rows[0]["media"]["sha256"] == next(iter(media.values())).sha256_hex
    chakra_requests = [r for r in harness.fake.requests if "/media/" in r.path
                       and r.path.endswith("/show")]
    assert chakra_requests
