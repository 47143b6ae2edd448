"""SSRF through a crafted media link, against a real gateway: every bad link is refused with a
clear reason, and its message is still stored (media `failed`).

The gateway runs with the development setting that allows local URLs (the fake provider is on
127.0.0.1), which still refuses link-local addresses (cloud metadata), other schemes, hosts
not allowed for the channel and oversized files. Loopback, private addresses and plain http
are refused in production; `tests/unit/test_urlpolicy.py` and `tests/unit/test_media_ssrf.py`
cover those with the development setting off.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Harness
from tests.e2e.payloads import media_bytes
from tests.http_stub import LocalServer, serve
from wacloud.domain.model import Provider

MAX_MEDIA_BYTES = 8 * 1024 * 1024  # WACLOUD_MAX_MEDIA_BYTES of the e2e gateway


@pytest.fixture(scope="module")
def stub() -> Iterator[LocalServer]:
    yield from serve(big_bytes=MAX_MEDIA_BYTES + 1)


def whapi_image(message_id: str, link: str, caption: str) -> dict[str, Any]:
    return {"id": message_id, "from_me": False, "type": "image",
            "chat_id": "5521998765432@s.whatsapp.net", "timestamp": int(time.time()),
            "from": "5521998765432", "from_name": "João",
            "image": {"id": f"jpeg-{message_id}", "mime_type": "image/jpeg",
                      "caption": caption, "link": link}}


def test_bad_media_links_are_refused_and_their_messages_stored(
        harness: Harness, stub: LocalServer) -> None:
    tenant = harness.tenant()
    # The stub server is on this channel's allow list (so its redirects are followed), and so
    # is the metadata address: the refusal must come from the address check, not the list.
    channel = harness.registry.add_channel(
        tenant=tenant, provider=Provider.WHAPI, key=f"CH-{uuid.uuid4().hex[:8]}",
        token=f"whapi-{uuid.uuid4().hex}", webhook_secret=uuid.uuid4().hex,
        api_base_url=harness.fake_url, media_hosts=[stub.hostport, "169.254.169.254"])
    harness.wait_channel_visible(channel)
    good = harness.fake.add_media(media_bytes("image/jpeg"), mime_type="image/jpeg",
                                  provider="whapi")
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    links = {
        "metadata": (metadata, "non-public address (169.254.169.254, link-local)"),
        "metadata-mapped": ("http://[::ffff:169.254.169.254]/latest/meta-data/",
                            "is not a whapi host"),
        "foreign": ("https://evil.example.com/x.jpg", "'evil.example.com' is not a whapi host"),
        "scheme": ("file:///etc/passwd", "scheme 'file' refused"),
        "redirect-metadata": (f"{stub.origin}/redirect?to={metadata}",
                              "redirected to a refused URL: media host '169.254.169.254' "
                              "resolves to a non-public address"),
        "redirect-foreign": (f"{stub.origin}/redirect?to=https://evil.example.com/x.jpg",
                             "redirected to a refused URL: media host 'evil.example.com' is "
                             "not a whapi host"),
        "redirect-other-port": (f"{stub.origin}/redirect?to=http://127.0.0.1:1/x.jpg",
                                "redirected to a refused URL: media host '127.0.0.1:1' is not "
                                "a whapi host"),
        "redirect-loop": (f"{stub.origin}/chain/9", "redirected more than 5 times"),
        "oversized": (f"{stub.origin}/big", f"exceeds the {MAX_MEDIA_BYTES}-byte limit"),
        "good": (f"{harness.fake_url}/whapi-files/{good.id}", None),
    }
    suffix = uuid.uuid4().hex[:6]
    payload = {"channel_id": channel.key, "event": {"type": "messages", "event": "post"},
               "messages": [whapi_image(f"{name}-{suffix}", url, f"caption {name}")
                            for name, (url, _) in links.items()]}

    assert harness.post_secret(channel, payload).status_code == 200

    rows = harness.wait_rows(tenant, len(links), predicate=lambda rows: all(
        r["media"]["status"] != "pending" for r in rows), timeout=30)
    by_name = {r["provider_message_id"].rsplit("-", 1)[0]: r for r in rows}
    assert set(by_name) == set(links)
    for name, (_, reason) in links.items():
        row = by_name[name]
        assert row["text"] == f"caption {name}" or row["content"].get("caption") == (
            f"caption {name}"), name
        if reason is None:
            assert row["media"]["status"] == "stored", (name, row["media"]["error"])
            continue
        assert row["media"]["status"] == "failed", name
        assert reason in (row["media"]["error"] or ""), (name, row["media"]["error"])
        assert row["media"]["key"] is None
    # The stub saw only its own redirects and the big file: nothing was fetched elsewhere.
    assert {s.path for s in stub.seen} <= {"/redirect", "/big"} | {
        f"/chain/{n}" for n in range(10)}
