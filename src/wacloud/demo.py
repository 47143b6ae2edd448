"""`make run`: a demo data dir, the fake provider, the gateway, and a message going in.

It sends a signed Meta webhook carrying a text and an image, waits until both rows are in the
demo tenant's database with the image copied to the media folder, prints them, and keeps
serving with instructions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx

from wacloud.adapters.db.views import list_messages
from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.credentials import CredentialsBroker
from wacloud.hosting.embedded import serve
from wacloud.model import Provider
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.webhooks import dumps, meta_envelope, meta_media, meta_text, sign

PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
DISPLAY = "5511940001234"
CUSTOMER = "5511987654321"
# Demo-only values, generated per run so nothing secret-looking lives in the repo.
APP_SECRET = uuid.uuid4().hex
VERIFY_TOKEN = uuid.uuid4().hex
TOKEN = "demo-" + uuid.uuid4().hex

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5d3a1c40000000049454e44ae426082")


def print_rows(rows: list[dict[str, object]]) -> None:
    for row in rows:
        print("  " + json.dumps({k: row[k] for k in (
            "id", "direction", "type", "from", "to", "text", "status", "media")},
            ensure_ascii=False))


async def demo(data_dir: Path, port: int, keep_serving: bool) -> int:
    fake = FakeProvider(token=TOKEN)
    image = fake.add_media(PNG, mime_type="image/png")
    with FakeProviderServer(fake) as fake_server:
        os.environ["WACLOUD_DEV_ALLOW_LOCAL_URLS"] = "1"
        settings = load_settings(data_dir, dev_allow_local_urls=True, registry_poll_s=0.5)
        init_data_dir(settings)
        registry = open_registry(settings)
        registry.add_tenant("demo")
        registry.add_channel(tenant="demo", provider=Provider.META, key=PHONE_NUMBER_ID,
                             phone_number_id=PHONE_NUMBER_ID, waba_id=WABA_ID,
                             display_number=DISPLAY, token=TOKEN, app_secret=APP_SECRET,
                             verify_token=VERIFY_TOKEN, api_base_url=fake_server.base_url)
        print(f"fake provider (Meta Graph API) on {fake_server.base_url}")
        started = asyncio.Event()
        server = asyncio.create_task(serve(settings, "127.0.0.1", port, started))
        await asyncio.wait_for(started.wait(), 15)
        base = f"http://127.0.0.1:{port}"
        print(f"gateway on {base}")

        text, contact = meta_text(CUSTOMER, "Olá! Meu pedido chegou?", "wamid.demo-text-1")
        photo = meta_media(CUSTOMER, "image", image.id, "image/png", image.sha256_hex,
                           "wamid.demo-image-1", caption="Comprovante")
        body = dumps(meta_envelope(PHONE_NUMBER_ID, WABA_ID, DISPLAY, [text, photo], None,
                                   [contact]))
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{base}/webhooks/meta", content=body, headers={
                "X-Hub-Signature-256": sign(body, APP_SECRET),
                "Content-Type": "application/json"})
        print(f"\nPOST /webhooks/meta (signed, 1 text + 1 image) -> HTTP {answer.status_code}")

        broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
        deadline = time.monotonic() + 20
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            rows = list_messages(broker.tenant_store("demo").engine, "in")
            if len(rows) == 2 and all(
                    not r["media"] or r["media"]["status"] == "stored"  # type: ignore[index]
                    for r in rows):
                break
            await asyncio.sleep(0.1)
        print("stored in tenant 'demo' (wacloud messages --tenant demo --json):")
        print_rows(rows)
        print(f"media folder: {settings.media_dir.resolve()}")
        ok = len(rows) == 2
        if keep_serving:
            print(f"\nThe gateway keeps serving on {base} (Ctrl-C to stop). Try:\n"
                  f"  .venv/bin/wacloud messages --data-dir {data_dir} --tenant demo\n"
                  f"  curl '{base}/webhooks/meta?hub.mode=subscribe&hub.challenge=42"
                  f"&hub.verify_token=<verify token>'\n"
                  f"  curl {base}/metrics\n")
            with contextlib.suppress(asyncio.CancelledError):
                await server
        else:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
        return 0 if ok else 1


def run_demo(data_dir: Path, port: int, keep_serving: bool) -> int:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    try:
        return asyncio.run(demo(data_dir, port, keep_serving))
    except KeyboardInterrupt:
        return 0
