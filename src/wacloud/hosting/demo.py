"""`make run`: a demo data dir, the fake provider, the gateway, a message going in and one out.

In: it sends a signed Meta webhook carrying a text and an image, waits until both rows are in
the demo tenant's database with the image copied to the media folder, and prints them.
Out: it creates a tenant API key, submits a text with `POST /v1/messages`, waits until the
fake provider has accepted it (status 3), prints the request the fake provider received, then
sends signed `delivered` and `read` receipts and shows the row moving forward. It then keeps
serving with instructions (or exits, with `--exit`).

With `--json` the narration is left out and one JSON object is printed at the end (see
`DemoResult`): what was stored, what was sent, the ids and how long each step took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.adapters.db.tenant.views import list_messages
from wacloud.bootstrap import init_data_dir, open_credentials, open_registry
from wacloud.domain.model import Provider
from wacloud.hosting.embedded import serve
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.webhooks import (
    dumps,
    meta_envelope,
    meta_media,
    meta_status,
    meta_text,
    sign,
)

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


T = TypeVar("T")
WAIT_S = 20.0
Say = Callable[[str], None]


@dataclass(slots=True)
class DemoResult:
    """What `wacloud demo --json` prints: `ok`, where things run, and per direction what
    happened, its ids and the seconds each step took (`null` for a step not reached)."""

    data_dir: str
    gateway: str | None = None
    fake_provider: str | None = None
    inbound: dict[str, Any] = field(default_factory=lambda: {
        "ok": False, "webhook_status": None, "messages": [], "media_dir": None,
        "stored_s": None})
    outbound: dict[str, Any] = field(default_factory=lambda: {
        "ok": False, "id": None, "submit_status": None, "provider_message_id": None,
        "status": None, "status_code": None, "provider_request": None,
        "accepted_s": None, "delivered_s": None, "read_s": None})
    api_key: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.inbound["ok"] and self.outbound["ok"])

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "data_dir": self.data_dir, "gateway": self.gateway,
                "fake_provider": self.fake_provider, "tenant": "demo",
                "channel": PHONE_NUMBER_ID, "inbound": self.inbound,
                "outbound": self.outbound, "api_key": self.api_key, "error": self.error}


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 3)


def print_rows(rows: list[dict[str, object]], say: Say) -> None:
    for row in rows:
        say("  " + json.dumps({k: row[k] for k in (
            "id", "direction", "type", "from", "to", "text", "status", "media")},
            ensure_ascii=False))


async def poll(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool],
               timeout: float = WAIT_S) -> tuple[T, bool]:
    """Fetch until `done` says so or the deadline passes: (last value, whether done)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value, True
        if time.monotonic() >= deadline:
            return value, False
        await asyncio.sleep(0.1)


async def post_webhook(client: httpx.AsyncClient, base: str, payload: dict[str, Any]) -> int:
    body = dumps(payload)
    answer = await client.post(f"{base}/webhooks/meta", content=body, headers={
        "X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"})
    return answer.status_code


def reached(status_code: int) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row.get("status_code") == status_code


def show_outbound(row: dict[str, Any]) -> str:
    shown = f"{row['status']} ({row['status_code']})"
    if row.get("provider_message_id"):
        shown += f", provider_message_id {row['provider_message_id']}"
    if row.get("error"):
        shown += f", error {row['error']}"
    return shown


def show_provider_request(fake: FakeProvider, provider_message_id: str, say: Say
                          ) -> dict[str, Any] | None:
    """Print what the fake provider received for the message it answered with this id;
    return it (method, path, body, the HTTP status it answered)."""
    sent = next((m for m in fake.sent_snapshot() if m.message_id == provider_message_id), None)
    if sent is None:
        say("  (the fake provider has no record of it)")
        return None
    recorded = next((r for r in reversed(list(fake.requests))
                     if r.method == "POST" and r.path == sent.path
                     and json.loads(r.body or b"null") == sent.body), None)
    say("the fake provider (as Meta) received:")
    if recorded is not None:
        auth = recorded.headers.get("authorization", "none")
        say(f"  {recorded.method} {recorded.path}  Authorization: {auth}")
    say(f"  {json.dumps(sent.body, ensure_ascii=False)}")
    say(f"  -> HTTP {sent.status}, message id {sent.message_id}")
    return {"method": "POST", "path": sent.path, "body": sent.body, "http_status": sent.status}


def _fail(outbound: dict[str, Any], message: str, say: Say) -> None:
    say(f"  {message}")
    outbound["error"] = message


async def outbound_demo(client: httpx.AsyncClient, base: str, fake: FakeProvider,
                        key: str, say: Say, outbound: dict[str, Any]) -> None:
    """A text out through the tenant API, accepted by the fake provider, then delivered and
    read receipts; what happened goes into `outbound` (`ok` when all of it did)."""
    auth = {"Authorization": f"Bearer {key}"}

    async def key_check() -> int:
        return (await client.get(f"{base}/v1/messages/0", headers=auth)).status_code

    # A new key reaches the gateway within its registry poll interval.
    status, ok = await poll(key_check, lambda code: code == 404)
    if not ok:
        _fail(outbound, f"the gateway did not accept the new API key (HTTP {status})", say)
        return
    submission = {"channel": PHONE_NUMBER_ID, "to": CUSTOMER, "type": "text",
                  "text": {"body": "Sim! Entregue hoje às 10:32."},
                  "reply_to": "wamid.demo-text-1"}
    started = time.monotonic()
    answer = await client.post(f"{base}/v1/messages", json=submission, headers=auth)
    outbound["submit_status"] = answer.status_code
    shown = (f"id {answer.json()['id']}, {answer.json()['status']}"
             if answer.status_code == 201 else answer.text)
    say(f"POST /v1/messages (text to {CUSTOMER}, replying to wamid.demo-text-1) "
        f"-> HTTP {answer.status_code}, {shown}")
    if answer.status_code != 201:
        outbound["error"] = f"POST /v1/messages answered HTTP {answer.status_code}"
        return
    row_id = int(answer.json()["id"])
    outbound["id"] = row_id

    async def read_row() -> dict[str, Any]:
        data: dict[str, Any] = (await client.get(f"{base}/v1/messages/{row_id}",
                                                 headers=auth)).json()
        return data

    def note(row: dict[str, Any]) -> None:
        outbound.update(status=row.get("status"), status_code=row.get("status_code"),
                        provider_message_id=row.get("provider_message_id"))

    row, ok = await poll(read_row, lambda r: r.get("status_code") == 3
                         and bool(r.get("provider_message_id")))
    note(row)
    say(f"  GET /v1/messages/{row_id} -> {show_outbound(row)}")
    if not ok:
        _fail(outbound, "timed out waiting for the fake provider to accept it", say)
        return
    outbound["accepted_s"] = elapsed(started)
    wamid = str(row["provider_message_id"])
    outbound["provider_request"] = show_provider_request(fake, wamid, say)

    for receipt, code in (("delivered", 5), ("read", 6)):
        started = time.monotonic()
        status = await post_webhook(client, base, meta_envelope(
            PHONE_NUMBER_ID, WABA_ID, DISPLAY, None, [meta_status(wamid, receipt, CUSTOMER)]))
        say(f"POST /webhooks/meta (signed receipt: {receipt}) -> HTTP {status}")
        row, ok = await poll(read_row, reached(code))
        note(row)
        say(f"  GET /v1/messages/{row_id} -> {show_outbound(row)}")
        if not ok:
            _fail(outbound, f"timed out waiting for the row to become {receipt}", say)
            return
        outbound[f"{receipt}_s"] = elapsed(started)
    outbound["ok"] = True


async def demo(data_dir: Path, port: int, keep_serving: bool, internal_port: int = 8081,
               as_json: bool = False) -> int:
    result = DemoResult(str(data_dir.resolve()))
    say: Say = (lambda _text: None) if as_json else print
    fake = FakeProvider(token=TOKEN)
    image = fake.add_media(PNG, mime_type="image/png")
    with FakeProviderServer(fake) as fake_server:
        # The stage worker that `serve` starts gets these settings as WACLOUD_* variables.
        # WARNING: the worker's routine INFO lines (migrations, HTTP calls) would bury the demo.
        settings = load_settings(data_dir, dev_allow_local_urls=True, registry_poll_s=0.5,
                                 log_level="WARNING", internal_host="127.0.0.1",
                                 internal_port=internal_port)
        init_data_dir(settings)
        registry = open_registry(settings)
        registry.add_tenant("demo")
        registry.add_channel(tenant="demo", provider=Provider.META, key=PHONE_NUMBER_ID,
                             phone_number_id=PHONE_NUMBER_ID, waba_id=WABA_ID,
                             display_number=DISPLAY, token=TOKEN, app_secret=APP_SECRET,
                             verify_token=VERIFY_TOKEN, api_base_url=fake_server.base_url)
        result.fake_provider = fake_server.base_url
        say(f"fake provider (Meta Graph API) on {fake_server.base_url}")
        started = asyncio.Event()
        server = asyncio.create_task(serve(settings, "127.0.0.1", port, started))
        await asyncio.wait_for(started.wait(), 15)
        base = f"http://127.0.0.1:{port}"
        result.gateway = base
        say(f"gateway on {base}")
        broker = open_credentials(settings, registry)
        engine = broker.tenant_store("demo").engine

        async with httpx.AsyncClient(timeout=10) as client:
            say("\n== IN: a customer writes (Meta webhook) ==")
            text, contact = meta_text(CUSTOMER, "Olá! Meu pedido chegou?", "wamid.demo-text-1")
            photo = meta_media(CUSTOMER, "image", image.id, "image/png", image.sha256_hex,
                               "wamid.demo-image-1", caption="Comprovante")
            posted = time.monotonic()
            status = await post_webhook(client, base, meta_envelope(
                PHONE_NUMBER_ID, WABA_ID, DISPLAY, [text, photo], None, [contact]))
            result.inbound["webhook_status"] = status
            say(f"POST /webhooks/meta (signed, 1 text + 1 image) -> HTTP {status}")

            async def inbound_rows() -> list[dict[str, Any]]:
                return await asyncio.to_thread(list_messages, engine, "in")

            rows, inbound_ok = await poll(inbound_rows, lambda rows: len(rows) == 2 and all(
                not r["media"] or r["media"]["status"] == "stored" for r in rows))
            result.inbound.update(
                ok=inbound_ok, stored_s=elapsed(posted) if inbound_ok else None,
                media_dir=str(settings.media_dir.resolve()),
                messages=[{"id": r["id"], "provider_message_id": r["provider_message_id"],
                           "type": r["type"], "from": r["from"], "text": r["text"],
                           "status": r["status"],
                           "media": ({"status": r["media"]["status"], "key": r["media"]["key"]}
                                     if r["media"] else None)} for r in rows])
            if not inbound_ok:
                result.inbound["error"] = "timed out waiting for both messages to be stored"
            say("stored in tenant 'demo' (wacloud messages --tenant demo --json):")
            print_rows(rows, say)
            say(f"media folder: {settings.media_dir.resolve()}")

            say("\n== OUT: the business answers (tenant API -> provider -> receipts) ==")
            _, key = await asyncio.to_thread(create_api_key, registry, tenant="demo",
                                             label="demo")
            result.api_key = key
            say(f"tenant API key for 'demo' (shown once, stored hashed): {key}")
            await outbound_demo(client, base, fake, key, say, result.outbound)
            row_id = result.outbound["id"]

        say(f"\ndata dir: {data_dir.resolve()}")
        ok = result.ok
        if not ok:
            result.error = "the demo did not complete"
            say("the demo did not complete (see above)")
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        if keep_serving:
            message = json.dumps({"channel": PHONE_NUMBER_ID, "to": CUSTOMER, "type": "text",
                                  "text": {"body": "Mais uma mensagem"}}, ensure_ascii=False)
            say(f"\nThe gateway keeps serving on {base} (Ctrl-C to stop). Try:\n"
                f"  # send another message (the fake provider accepts it)\n"
                f"  curl -s {base}/v1/messages -H 'Authorization: Bearer {key}' \\\n"
                f"       -H 'Content-Type: application/json' -d {shlex.quote(message)}\n"
                f"  curl -s {base}/v1/messages/{row_id or 1} "
                f"-H 'Authorization: Bearer {key}'\n"
                f"  .venv/bin/wacloud messages --data-dir {data_dir} --tenant demo\n"
                f"  curl '{base}/webhooks/meta?hub.mode=subscribe&hub.challenge=42"
                f"&hub.verify_token=<verify token>'\n"
                f"  curl http://127.0.0.1:{internal_port}/metrics   # internal listener\n")
            with contextlib.suppress(asyncio.CancelledError):
                await server
        else:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
        broker.close()
        return 0 if ok else 1


def run_demo(data_dir: Path, port: int, keep_serving: bool, internal_port: int = 8081,
             as_json: bool = False) -> int:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    try:
        return asyncio.run(demo(data_dir, port, keep_serving, internal_port, as_json))
    except KeyboardInterrupt:
        return 0
