"""The dashboard at `/ui` of a real `wacloud serve`: plain HTTP checks of its log-in, session
cookie, CSRF checks and tenant scoping, and a real browser (Debian's chromium driven by
Playwright) that logs in, finds a message sent through the pipeline, opens its timeline and
media, replays a parked item and adds a channel. Screenshots go to `test-artifacts/ui/`
(git-ignored; the path is printed)."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Harness, fixture, wait_for
from tests.e2e.payloads import meta_messages, retarget_meta
from wacloud.adapters.db.registry.api_keys import create_api_key, revoke_api_key
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.domain.model import Channel
from wacloud.settings import load_settings
from wacloud.stages import envelopes
from wacloud.stages.collect import outbound_from_row, send_envelope
from wacloud.testing.webhooks import meta_envelope, meta_text

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def png(width: int = 96, height: int = 64) -> bytes:
    """A real PNG (a colour gradient), so the browser shows the preview as an image."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160))
                                       for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def admin_key(harness: Harness) -> str:
    key = create_api_key(harness.registry, tenant=None, admin=True)[1]
    wait_for(lambda: harness.client.get("/admin/v1/tenants", headers={
        "Authorization": f"Bearer {key}"}).status_code == 200, message="admin key visible")
    return key


def ui_client(harness: Harness) -> httpx.Client:
    """A browser-like client: same-origin `Origin` on its posts, redirects not followed."""
    return httpx.Client(base_url=harness.gateway.base_url, timeout=10,
                        headers={"Origin": harness.gateway.base_url})


def log_in(client: httpx.Client, key: str) -> str:
    """Log in; returns the CSRF token of the session's pages."""
    answer = client.post("/ui/login", data={"key": key})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui", answer.text
    page = client.get("/ui/messages")
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match is not None
    return match.group(1)


def send_and_read(harness: Harness, channel: Channel, key: str, to: str, text: str) -> int:
    """A message through the tenant API, out to the fake provider, and its receipts back as
    webhooks (sent, delivered, read): returns its outbox row id."""
    sent = harness.submit(key, {"channel": channel.key, "to": to, "type": "text",
                                "text": {"body": text}})
    assert sent.status_code == 201, sent.text
    row_id: int = sent.json()["id"]
    rows = harness.wait_outbox(channel.tenant, lambda rows: rows[row_id]["provider_message_id"])
    wamid = rows[row_id]["provider_message_id"]
    for status in ("status_sent", "status_delivered", "status_read"):
        receipt = copy.deepcopy(retarget_meta(fixture("meta", status), channel.key,
                                              channel.waba_id or ""))
        entry = receipt["entry"][0]["changes"][0]["value"]["statuses"][0]
        entry["id"], entry["timestamp"] = wamid, str(int(time.time()))
        assert harness.post_meta(receipt, channel.app_secret).status_code == 200
    harness.wait_outbox(channel.tenant, lambda rows: rows[row_id]["status"] == 6,
                        message="read")
    return row_id


def bury(harness: Harness, tenant: str, row_id: int) -> None:
    """Put an outbox row's send message in the send queue's DLQ, as the send stage does when
    the row runs out of attempts."""
    dead = send_envelope(outbound_from_row(tenant, harness.outbox(tenant)[row_id]))

    async def send() -> None:
        queues = SqliteBroker(load_settings(harness.gateway.data_dir).queue_path)
        try:
            await queues.queue(QueueSpec(envelopes.OUTBOUND_SEND_DEAD)).send(dead.body)
        finally:
            await queues.close()

    # Playwright's sync API may keep an event loop running in this thread: another thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result(30)


# -- plain HTTP: log-in, cookie, CSRF, scoping -------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_and_keeps_the_key_out_of_urls(
        harness: Harness) -> None:
    key = admin_key(harness)
    with ui_client(harness) as client:
        assert client.get("/ui").headers["location"] == "/ui/login"
        refused = client.post("/ui/login", data={"key": "wak_not-a-key"})
        assert refused.status_code == 401 and "wacloud_ui" not in refused.headers.get(
            "set-cookie", "")
        answer = client.post("/ui/login", data={"key": key})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Path=/ui" in cookie and "Secure" not in cookie and "Max-Age=" in cookie
        assert key not in cookie and key not in answer.headers["location"]
        page = client.get("/ui")
        assert page.status_code == 200 and "Overview" in page.text and key not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        # A GET log-in is only the form: a key in a URL logs nobody in.
        assert "wacloud_ui" not in client.get(f"/ui/login?key={key}").headers.get(
            "set-cookie", "")

    with ui_client(harness) as client:
        behind_proxy = client.post("/ui/login", data={"key": key},
                                   headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in behind_proxy.headers["set-cookie"]


def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(
        harness: Harness) -> None:
    key = admin_key(harness)
    with ui_client(harness) as client:
        token = log_in(client, key)
        tenant = harness.tenant()
        channel = harness.meta_channel(tenant)
        action = f"/ui/channels/{channel.id}/pause"
        assert client.post(action, data={}).status_code == 403
        assert client.post(action, data={"csrf": "wrong"}).status_code == 403
        evil = client.post(action, data={"csrf": token},
                           headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        no_origin = httpx.Client(base_url=harness.gateway.base_url, cookies=client.cookies)
        with no_origin:
            assert no_origin.post(action, data={"csrf": token}).status_code == 403
        assert not harness.registry.channel_by_id(channel.id).paused
        done = client.post(action, data={"csrf": token, "reason": "maintenance"})
        assert done.status_code == 303
        assert harness.registry.channel_by_id(channel.id).pause_reason == "maintenance"
        # A log-in posted from another site is refused too (login CSRF).
        assert client.post("/ui/login", data={"key": key}, headers={
            "Origin": "https://evil.example"}).status_code == 403
        # Log out ends the session on the server, not just in the browser.
        old = client.cookies.get("wacloud_ui")
        assert client.post("/ui/logout", data={"csrf": token}).status_code == 303
        stale = httpx.Client(base_url=harness.gateway.base_url, cookies={"wacloud_ui": old})
        with stale:
            assert stale.get("/ui").headers["location"] == "/ui/login"


def test_a_tenant_key_sees_only_its_tenant(harness: Harness) -> None:
    mine, theirs = harness.tenant(), harness.tenant()
    my_channel, their_channel = harness.meta_channel(mine), harness.meta_channel(theirs)
    my_key, their_key = harness.api_key(mine), harness.api_key(theirs)
    my_row = send_and_read(harness, my_channel, my_key, "5571900000001", "para mim")
    their_row = send_and_read(harness, their_channel, their_key, "5571900000002", "segredo")
    with ui_client(harness) as client:
        log_in(client, my_key)
        own = client.get(f"/ui/messages/{mine}/outbound/{my_row}")
        assert own.status_code == 200 and "para mim" in own.text
        assert client.get(f"/ui/messages/{theirs}/outbound/{their_row}").status_code == 404
        listed = client.get("/ui/messages", params={"tenant": theirs})
        assert listed.status_code == 404 and "segredo" not in listed.text
        assert "segredo" not in client.get("/ui/messages").text
        channels = client.get("/ui/channels").text
        assert my_channel.key in channels and their_channel.key not in channels
        overview = client.get("/ui").text
        assert my_channel.key in overview and their_channel.key not in overview
        for admin_only in ("/ui/parked", "/ui/dead-letters", "/ui/tenants",
                           "/ui/channels/new"):
            assert client.get(admin_only).status_code == 403, admin_only
        # A revoked key ends its sessions at the next request.
        record = harness.broker.api_key(my_key)
        assert record is not None
        revoke_api_key(harness.registry, record.id)
        wait_for(lambda: client.get("/ui").status_code == 303, message="session ended")


# -- the browser --------------------------------------------------------------------------------


def chromium_path() -> str | None:
    path = os.environ.get("WACLOUD_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    return path if path and os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = None
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[dev]')"
    if path is None:
        problem = "no chromium found (apt-get install -y chromium; .ci/run installs it)"
    if problem is not None:
        if os.environ.get("WACLOUD_REQUIRE_SERVICES") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    with sync_playwright() as playwright:
        # Debian's chromium, never a browser downloaded by Playwright.
        launched = playwright.chromium.launch(executable_path=path, headless=True,
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def test_browser_finds_a_sent_message_its_timeline_and_replays_a_parked_item(
        harness: Harness, browser: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    app_secret = f"ui-app-{uuid.uuid4().hex[:8]}"
    tenant = harness.tenant(f"ui-{uuid.uuid4().hex[:6]}")
    channel = harness.meta_channel(tenant, app_secret=app_secret)
    key = harness.api_key(tenant)
    to = f"55719{uuid.uuid4().int % 10**8:08d}"
    row_id = send_and_read(harness, channel, key, to, "Seu pedido saiu para entrega")

    # One the provider refuses for good: its timeline ends in the failure, with the text.
    refused_to = f"55718{uuid.uuid4().int % 10**8:08d}"
    harness.fake.script(refused_to, times=1, status=400, error_code=131026,
                        error_message="Message undeliverable")
    answer = harness.submit(key, {"channel": channel.key, "to": refused_to, "type": "text",
                                  "text": {"body": "não vai"}})
    assert answer.status_code == 201, answer.text
    failed_id = answer.json()["id"]
    harness.wait_outbox(tenant, lambda rows: rows[failed_id]["status"] == -100,
                        message="failed")

    # What the send stage does when a row runs out of attempts: its message in the DLQ.
    bury(harness, tenant, failed_id)

    # An inbound image, copied from the fake provider into the media store.
    image = retarget_meta(fixture("meta", "image"), channel.key, channel.waba_id or "",
                          suffix=uuid.uuid4().hex[:6])
    [message] = meta_messages(image)
    data = png()
    media = harness.fake.add_media(data, mime_type="image/png", provider="meta")
    message["image"].update(id=media.id, sha256=media.sha256_b64, mime_type="image/png")
    assert harness.post_meta(image, app_secret).status_code == 200
    rows = harness.wait_rows(tenant, 1, predicate=lambda rows: any(
        r["media"] and r["media"]["status"] == "stored" for r in rows))
    inbound_id = next(r["id"] for r in rows if r["media"])

    # A webhook for a number no channel has yet: parked, replayed once the channel exists.
    number, waba = f"1078{uuid.uuid4().int % 10**11:011d}", f"1098{uuid.uuid4().int % 10**8}"
    orphan, contact = meta_text("5511987650000", "chegou depois", f"wamid.ui-{uuid.uuid4().hex}")
    payload = meta_envelope(number, waba, "5511940009999", [orphan], None, [contact])
    assert harness.post_meta(payload, app_secret).status_code == 200
    parked = wait_for(lambda: [p for p in harness.parked() if p.channel_key == number],
                      message="parked item")[0]
    late = harness.tenant()
    harness.meta_channel(late, phone_number_id=number, waba_id=waba, app_secret=app_secret)

    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    base = harness.gateway.base_url
    try:
        page.goto(f"{base}/ui")
        assert page.url.endswith("/ui/login")
        page.screenshot(path=str(ARTIFACTS / "login.png"))
        page.fill("input[name=key]", admin_key(harness))
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/ui")
        assert page.locator("svg.chart").count() == 1
        assert page.get_by_role("cell", name=channel.key, exact=True).count() >= 1
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

        # Find the message by its contact and open its timeline.
        page.goto(f"{base}/ui/messages")
        page.select_option("select[name=tenant]", tenant)
        page.fill("input[name=contact]", to)
        page.click("form.search button[type=submit]")
        page.wait_for_url(re.compile(r".*contact=.*"))
        links = page.locator(f"a[href='/ui/messages/{tenant}/outbound/{row_id}']")
        assert links.count() == 1
        page.screenshot(path=str(ARTIFACTS / "messages.png"), full_page=True)
        links.first.click()
        page.wait_for_url(f"{base}/ui/messages/{tenant}/outbound/{row_id}")
        steps = page.locator("ol.timeline .step").all_inner_texts()
        assert [s.lower() for s in steps[:1]] == ["created"], steps
        assert {"queued", "accepted", "sent", "delivered", "read"} <= {
            s.lower() for s in steps}, steps
        assert "Seu pedido saiu para entrega" in page.inner_text("dl.facts")
        page.screenshot(path=str(ARTIFACTS / "message-timeline.png"), full_page=True)

        page.goto(f"{base}/ui/messages/{tenant}/outbound/{failed_id}")
        failure = page.locator("ol.timeline li.failed")
        assert "131026" in failure.inner_text() and "undeliverable" in failure.inner_text()
        page.screenshot(path=str(ARTIFACTS / "message-failed.png"), full_page=True)

        # The inbound image, shown inline through the authenticated media route.
        page.goto(f"{base}/ui/messages/{tenant}/messages/{inbound_id}")
        img = page.locator("img.media")
        img.wait_for()
        assert page.evaluate("(el) => el.complete && el.naturalWidth", img.element_handle()) == 96
        page.screenshot(path=str(ARTIFACTS / "message-media.png"), full_page=True)

        # Replay the parked item: its message reaches the channel's tenant.
        page.goto(f"{base}/ui/parked")
        row = page.locator(f"#parked-{parked.id}")
        assert number in row.inner_text()
        page.screenshot(path=str(ARTIFACTS / "parked.png"), full_page=True)
        row.get_by_role("button", name="Replay").click()
        page.wait_for_url(f"{base}/ui/parked")
        assert f"Parked item {parked.id} sent back" in page.inner_text("main")
        replayed = harness.wait_rows(late, 1)
        assert replayed[0]["text"] == "chegou depois"

        # Replay the dead letter: the row is queued again and, this time, sent.
        page.goto(f"{base}/ui/dead-letters")
        letter = page.locator("tr", has_text=tenant)
        assert "outbound.send" in letter.inner_text()
        page.screenshot(path=str(ARTIFACTS / "dead-letters.png"), full_page=True)
        letter.get_by_role("button", name="Replay").click()
        page.wait_for_url(f"{base}/ui/dead-letters")
        assert "put back on outbound.send" in page.inner_text("main")
        harness.wait_outbox(tenant, lambda rows: rows[failed_id]["provider_message_id"],
                            message="the replayed dead letter sent")

        # Add a Whapi channel: the webhook URL and the secret to paste, shown once.
        page.goto(f"{base}/ui/channels/new?provider=whapi")
        page.select_option("select[name=tenant]", tenant)
        whapi_id = f"UI-{uuid.uuid4().hex[:8].upper()}"
        page.fill("input[name=channel_id]", whapi_id)
        page.fill("input[name=token]", "whapi-token-from-the-panel")
        page.click("form.stacked button[type=submit]")
        url = page.inner_text("#webhook-url")
        secret = page.inner_text("#secret")
        assert url == f"{base}/webhooks/whapi/{whapi_id}" and len(secret) >= 24
        page.screenshot(path=str(ARTIFACTS / "channel-created.png"), full_page=True)
        page.goto(f"{base}/ui/channels")
        assert whapi_id in page.inner_text("main") and secret not in page.content()
        page.screenshot(path=str(ARTIFACTS / "channels.png"), full_page=True)

        # The tenant's own key: its overview only, no admin pages in the menu.
        tenant_view = browser.new_context(viewport={"width": 1360, "height": 900})
        try:
            mine = tenant_view.new_page()
            mine.goto(f"{base}/ui/login")
            mine.fill("input[name=key]", key)
            mine.click("button[type=submit]")
            mine.wait_for_url(f"{base}/ui")
            assert f"tenant {tenant}" in mine.inner_text("header")
            assert mine.locator("a[href='/ui/parked']").count() == 0
            mine.screenshot(path=str(ARTIFACTS / "tenant-overview.png"), full_page=True)
        finally:
            tenant_view.close()
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise
    finally:
        context.close()


def test_a_parked_item_is_discarded_only_with_a_reason_and_text_is_escaped(
        harness: Harness) -> None:
    app_secret = f"ui-app-{uuid.uuid4().hex[:8]}"
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant, app_secret=app_secret)
    key = harness.api_key(tenant)
    row_id = send_and_read(harness, channel, key, "5571900000003",
                           "<script>alert(1)</script>")
    number = f"1079{uuid.uuid4().int % 10**11:011d}"
    orphan, contact = meta_text("5511987650001", "ninguém", f"wamid.ui-{uuid.uuid4().hex}")
    payload = meta_envelope(number, "1097000001", "5511940009998", [orphan], None, [contact])
    assert harness.post_meta(payload, app_secret).status_code == 200
    parked = wait_for(lambda: [p for p in harness.parked() if p.channel_key == number],
                      message="parked item")[0]
    with ui_client(harness) as client:
        token = log_in(client, admin_key(harness))
        page = client.get(f"/ui/messages/{tenant}/outbound/{row_id}").text
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        action = f"/ui/parked/{parked.id}/discard"
        assert client.post(action, data={"csrf": token, "reason": " "}).status_code == 422
        assert any(p.id == parked.id for p in harness.parked())
        done = client.post(action, data={"csrf": token, "reason": "spam from a test"})
        assert done.status_code == 303
        assert all(p.id != parked.id for p in harness.parked())
        record = (harness.gateway.data_dir / "parked-discards.jsonl").read_text()
        assert "spam from a test" in record and str(parked.id) in record
        assert f"Parked item {parked.id} discarded" in client.get("/ui/parked").text
        bury(harness, tenant, row_id)
        letters = client.get("/ui/dead-letters").text
        found = re.search(r'action="/ui/dead-letters/outbound\.send/([^/"]+)/discard"', letters)
        assert found is not None, letters
        action = f"/ui/dead-letters/outbound.send/{found.group(1)}/discard"
        assert client.post(action, data={"csrf": token}).status_code == 422
        assert client.post(action, data={"csrf": token, "reason": "duplicate"}
                           ).status_code == 303
        assert f"/{found.group(1)}/discard" not in client.get("/ui/dead-letters").text
        record = (harness.gateway.data_dir / "dlq-discards.jsonl").read_text()
        assert "duplicate" in record and found.group(1) in record
    # Media and pages need a session: nothing is served to a stranger.
    assert httpx.get(f"{harness.gateway.base_url}/ui/media/{tenant}/1").status_code == 303


def test_a_meta_channel_added_in_the_form_answers_meta_with_the_token_shown(
        harness: Harness) -> None:
    tenant = harness.tenant()
    with ui_client(harness) as client:
        token = log_in(client, admin_key(harness))
        number = f"1066{uuid.uuid4().int % 10**11:011d}"
        form = {"csrf": token, "provider": "meta", "tenant": tenant, "phone_number_id": number,
                "waba_id": "102290129340398", "display_number": "5511940001234",
                "app_secret": "the-app-secret", "verify_token": "", "token": "tok-secret",
                "api_base_url": harness.fake_url, "mps": "80"}
        bad = client.post("/ui/channels", data={**form, "display_number": "not a number"})
        assert bad.status_code == 422 and "display" in bad.text.lower()
        assert "tok-secret" not in bad.text and "the-app-secret" not in bad.text
        created = client.post("/ui/channels", data=form)
        assert created.status_code == 200, created.text
        assert created.headers["cache-control"] == "no-store"
        url = re.search(r'id="webhook-url">([^<]+)<', created.text)
        verify = re.search(r'id="secret">([^<]+)<', created.text)
        assert url is not None and verify is not None
        assert url.group(1) == f"{harness.gateway.base_url}/webhooks/meta"
        assert "tok-secret" not in created.text and "the-app-secret" not in created.text
        # Meta's handshake with the token shown succeeds: it is the channel's.
        answer = harness.client.get("/webhooks/meta", params={
            "hub.mode": "subscribe", "hub.verify_token": verify.group(1),
            "hub.challenge": "4242"})
        assert answer.status_code == 200 and answer.text == "4242"
        # Shown once: the channel list has the URL, never the token.
        listed = client.get("/ui/channels", params={"tenant": tenant}).text
        assert number in listed and verify.group(1) not in listed
        again = client.post("/ui/channels", data=form)
        assert again.status_code == 422 and "already" in again.text
