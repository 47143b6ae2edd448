"""No secret in any output: run the inbound and outbound pipelines with distinctive secrets and
look for them everywhere a person or another system could read them.

Secrets: each provider's token, the Meta app secret and verify token, the Whapi and Chakra
webhook secrets, the tenant DB password and the tenant API keys, each a unique value. The
pipeline: Meta, Whapi and Chakra webhooks with media (downloads need the tokens), a bad
signature, a wrong secret, a parked payload, sends through the API and `wacloud send`, a
Chakra media re-upload, a permanent error (131026), a dead-lettered message and a token
error (190, whose answer even echoes the token) that pauses the channel.

Searched: every log line of the `wacloud serve` process (at DEBUG), every HTTP response
(body and headers), every CLI output, every column of every table of the registry, the
tenant DBs (PostgreSQL when available, so the password is a real one) and the queue file,
except the encrypted columns, plus the raw bytes of every file in the data dir. A failure
names the kind of secret and where it was found, never the value.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import Harness, make_harness, wait_for
from tests.e2e.payloads import media_bytes
from tests.services import PG_USER, fresh_postgres_db
from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.domain.model import Channel, Provider
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_media, meta_text

CANARY = uuid.uuid4().hex[:12]
SECRETS = {
    "Meta token": f"EAAGmetaTok{CANARY}Zq",
    "Meta app secret": f"metaAppSecret{CANARY}",
    "Meta verify token": f"metaVerify{CANARY}",
    "Whapi token": f"whapiTok{CANARY}",
    "Whapi webhook secret": f"whapiHook{CANARY}",
    "Chakra token": f"chakraTok{CANARY}",
    "Chakra webhook secret": f"chakraHook{CANARY}",
    "tenant DB password": f"dbPass{CANARY}",
}
IMAGE = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 100
PHONE_NUMBER_ID = f"1065{int(CANARY, 16) % 10**11:011d}"
WABA_ID = f"1022{int(CANARY, 16) % 10**11:011d}"
CHAKRA_NUMBER_ID = f"1077{int(CANARY, 16) % 10**11:011d}"
WHAPI_KEY = f"LEAK-{CANARY[:8].upper()}"
PLUGIN_ID = str(uuid.uuid4())


@dataclass
class Capture:
    """Every text the test saw, labelled with where it came from."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def response(self, answer: httpx.Response) -> httpx.Response:
        # Labelled by path only: a Whapi request's query holds its secret on purpose.
        where = f"HTTP {answer.request.method} {answer.request.url.path} -> {answer.status_code}"
        headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        self.add(where, f"{headers}\n\n{answer.text}")
        return answer

    def cli(self, harness: Harness, *args: str) -> str:
        result = harness.cli(*args)
        # The command line itself holds secrets (`--token ...`); only its output is searched.
        self.add(f"CLI `wacloud {args[0]} {args[1] if len(args) > 1 else ''}` output",
                 result.stdout + result.stderr)
        assert result.returncode == 0, f"wacloud {args[0]} failed (exit {result.returncode})"
        return result.stdout

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        found = {f"{kind} in {where}" for where, text in self.texts
                 for kind, value in secrets.items() if value in text}
        return sorted(found)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviderServer]:
    # The fake's own token is the Meta token, so Meta media downloads need exactly it.
    with FakeProviderServer(FakeProvider(token=SECRETS["Meta token"])) as server:
        yield server


@pytest.fixture(scope="module")
def tenant_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tenant DB URL holding the password: PostgreSQL (which checks no password locally, so
    any value works) when reachable, else a SQLite URL with a password parameter."""
    password = SECRETS["tenant DB password"]
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_postgres_db())
        except pytest.skip.Exception:
            path = tmp_path_factory.mktemp("tenant-a") / "tenant.db"
            yield f"sqlite:///{path}?password={password}"
            return
        yield url.replace(f"//{PG_USER}@", f"//{PG_USER}:{password}@", 1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, fake: FakeProviderServer
            ) -> Iterator[Harness]:
    yield from make_harness(tmp_path_factory.mktemp("leak"), fake, {"WACLOUD_LOG_LEVEL": "DEBUG"})


def channel_of(harness: Harness, provider: Provider, key: str) -> Channel:
    return next(c for c in harness.registry.channels()
                if c.provider is provider and c.key == key)


def setup_tenants(harness: Harness, capture: Capture, tenant_db_url: str) -> tuple[str, str]:
    """Tenant A (own DB with a password): Meta. Tenant B (SQLite file): Whapi and Chakra."""
    tenant_a, tenant_b = f"leak-a-{CANARY[:6]}", f"leak-b-{CANARY[:6]}"
    capture.cli(harness, "tenant", "add", tenant_a, "--db-url", tenant_db_url)
    capture.cli(harness, "tenant", "add", tenant_b)
    fake = harness.fake
    capture.cli(harness, "channel", "add", "meta", "--tenant", tenant_a,
                "--phone-number-id", PHONE_NUMBER_ID, "--waba-id", WABA_ID,
                "--display-number", "5511940001234", "--token", SECRETS["Meta token"],
                "--app-secret", SECRETS["Meta app secret"],
                "--verify-token", SECRETS["Meta verify token"],
                "--api-base-url", harness.fake_url)
    capture.cli(harness, "channel", "add", "whapi", "--tenant", tenant_b,
                "--channel-id", WHAPI_KEY, "--token", SECRETS["Whapi token"],
                "--webhook-secret", SECRETS["Whapi webhook secret"],
                "--api-base-url", harness.fake_url)
    capture.cli(harness, "channel", "add", "chakra", "--tenant", tenant_b,
                "--plugin-id", PLUGIN_ID, "--phone-number-id", CHAKRA_NUMBER_ID,
                "--token", SECRETS["Chakra token"],
                "--webhook-secret", SECRETS["Chakra webhook secret"],
                "--api-base-url", harness.fake_url)
    fake.set_sender_token(PHONE_NUMBER_ID, SECRETS["Meta token"])
    fake.set_sender_token(PLUGIN_ID, SECRETS["Chakra token"])
    fake.set_whapi_channel(SECRETS["Whapi token"], WHAPI_KEY)
    for provider, key in ((Provider.META, PHONE_NUMBER_ID), (Provider.WHAPI, WHAPI_KEY),
                          (Provider.CHAKRA, PLUGIN_ID)):
        harness.wait_channel_visible(channel_of(harness, provider, key))
    return tenant_a, tenant_b


def run_inbound(harness: Harness, capture: Capture, tenant_a: str, tenant_b: str) -> None:
    fake, post = harness.fake, capture.response
    # Meta: the verify handshake (right and wrong token), a bad signature, then media + text +
    # a receipt, and a signed payload naming no known number (parked).
    post(harness.client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": SECRETS["Meta verify token"],
        "hub.challenge": "challenge-1"}))
    assert post(harness.client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "x"}
        )).status_code == 403
    image = fake.add_media(media_bytes("image/jpeg"), mime_type="image/jpeg")
    text, contact = meta_text("5511987650001", "olá", f"wamid.leak-text-{CANARY}")
    photo = meta_media("5511987650001", "image", image.id, "image/jpeg", image.sha256_b64,
                       f"wamid.leak-img-{CANARY}", caption="foto")
    receipt = {"id": f"wamid.leak-out-{CANARY}", "status": "delivered", "timestamp": "20",
               "recipient_id": "5511987650001"}
    body = meta_envelope(PHONE_NUMBER_ID, WABA_ID, "5511940001234", [text, photo], [receipt],
                         [contact])
    assert post(harness.post_meta(body, "not-the-app-secret")).status_code == 401
    assert post(harness.post_meta(body, SECRETS["Meta app secret"])).status_code == 200
    stray = meta_envelope("106549999999999", "102299999999999", "5511940009999",
                          [meta_text("5511987650002", "?", f"wamid.stray-{CANARY}")[0]])
    assert post(harness.post_meta(stray, SECRETS["Meta app secret"])).status_code == 200

    # Whapi: media by id (needs the token) and by auto-download link; secret in the query,
    # then in the header; a wrong secret; an unparseable body (parked).
    by_id = fake.add_media(media_bytes("image/png"), mime_type="image/png", provider="whapi",
                           token=SECRETS["Whapi token"])
    by_link = fake.add_media(media_bytes("application/pdf"), mime_type="application/pdf",
                             provider="whapi", token=SECRETS["Whapi token"],
                             filename="nota.pdf")
    whapi = {"channel_id": WHAPI_KEY, "event": {"type": "messages", "event": "post"},
             "messages": [
                 {"id": f"w-img-{CANARY}", "from_me": False, "type": "image",
                  "chat_id": "5521998760001@s.whatsapp.net", "timestamp": int(time.time()),
                  "from": "5521998760001", "from_name": "Ana",
                  "image": {"id": by_id.id, "mime_type": "image/png",
                            "sha256": by_id.sha256_b64}},
                 {"id": f"w-doc-{CANARY}", "from_me": False, "type": "document",
                  "chat_id": "5521998760001@s.whatsapp.net", "timestamp": int(time.time()),
                  "from": "5521998760001",
                  "document": {"id": by_link.id, "mime_type": "application/pdf",
                               "filename": "nota.pdf",
                               "link": f"{harness.fake_url}/whapi-files/{by_link.id}"}}]}
    whapi_channel = channel_of(harness, Provider.WHAPI, WHAPI_KEY)
    assert post(harness.post_secret(whapi_channel, whapi, in_query=True)).status_code == 200
    assert post(harness.post_secret(whapi_channel, whapi, secret="wrong")).status_code == 401
    garbage = harness.client.post(f"/webhooks/whapi/{WHAPI_KEY}", content=b"{not json",
                                  params={"token": SECRETS["Whapi webhook secret"]})
    assert post(garbage).status_code == 200

    # Chakra: Meta-format pass-through; the media comes through Chakra with its token.
    shown = fake.add_media(media_bytes("image/jpeg"), mime_type="image/jpeg",
                           provider="chakra", token=SECRETS["Chakra token"])
    chakra_photo = meta_media("5531998760002", "image", shown.id, "image/jpeg",
                              shown.sha256_b64, f"wamid.leak-chakra-{CANARY}")
    chakra_body = meta_envelope(CHAKRA_NUMBER_ID, WABA_ID, "5511940005678", [chakra_photo])
    chakra_channel = channel_of(harness, Provider.CHAKRA, PLUGIN_ID)
    assert post(harness.post_secret(chakra_channel, chakra_body)).status_code == 200

    def all_stored(rows: list[dict[str, Any]]) -> bool:
        return all(r["media"] is None or r["media"]["status"] == "stored" for r in rows)

    harness.wait_rows(tenant_a, 2, predicate=all_stored, timeout=30)
    harness.wait_rows(tenant_b, 3, predicate=all_stored, timeout=30)
    wait_for(lambda: len(harness.parked()) >= 2, message="two parked payloads")


def run_outbound(harness: Harness, capture: Capture, tenant_a: str, tenant_b: str) -> None:
    fake, post = harness.fake, capture.response
    key_a = create_api_key(harness.registry, tenant=tenant_a)[1]
    key_b = create_api_key(harness.registry, tenant=tenant_b)[1]
    SECRETS["tenant A API key"], SECRETS["tenant B API key"] = key_a, key_b
    wait_for(lambda: harness.client.get("/v1/messages/0", headers={
        "Authorization": f"Bearer {key_b}"}).status_code == 404, message="API keys visible")

    def submit(key: str, message: dict[str, Any]) -> int:
        answer = post(harness.submit(key, message))
        assert answer.status_code == 201, f"submission answered {answer.status_code}"
        row_id: int = answer.json()["id"]
        return row_id

    accepted = submit(key_a, {"channel": PHONE_NUMBER_ID, "to": "5511987650010",
                              "type": "text", "text": {"body": "pedido enviado"}})
    fake.script("5511987650011", times=1, status=400, error_code=131026)
    undeliverable = submit(key_a, {"channel": PHONE_NUMBER_ID, "to": "5511987650011",
                                   "type": "text", "text": {"body": "não entregue"}})
    link = harness.fake_url + fake.add_file(f"{CANARY}.jpg", IMAGE, "image/jpeg")
    rehosted = submit(key_b, {"channel": PLUGIN_ID, "to": "5511987650012", "type": "image",
                              "image": {"link": link, "caption": "comprovante"}})
    capture.cli(harness, "send", "--tenant", tenant_b, "--channel", WHAPI_KEY,
                "--to", "5511987650013", "--text", "via cli")
    fake.script("5511987650014", times=4, status=503, provider="whapi")
    capture.cli(harness, "send", "--tenant", tenant_b, "--channel", WHAPI_KEY,
                "--to", "5511987650014", "--text", "dead letter")
    harness.wait_outbox(tenant_a, lambda rows: rows[accepted]["status"] == 3
                        and rows[undeliverable]["status"] == -100, timeout=30)
    harness.wait_outbox(tenant_b, lambda rows: len(rows) == 3 and rows[rehosted]["status"] == 3
                        and sorted(r["status"] for r in rows.values()) == [-100, 3, 3],
                        timeout=30, message="B's sends settled (one dead-lettered)")

    # Last: a token error that pauses the Meta channel. Its answer echoes the token, as some
    # wrappers do; neither the pause reason nor the row may keep it.
    fake.script("5511987650015", times=1, status=401, error_code=190,
                 error_message=f"Error validating access token {SECRETS['Meta token']}")
    paused = submit(key_a, {"channel": PHONE_NUMBER_ID, "to": "5511987650015", "type": "text",
                            "text": {"body": "pausa"}})
    wait_for(lambda: channel_of(harness, Provider.META, PHONE_NUMBER_ID).paused,
             timeout=30, message="Meta channel paused by error 190")
    harness.wait_outbox(tenant_a, lambda rows: rows[paused]["error_code"] == "190",
                        message="190 noted on the row")
    for key, ids in ((key_a, (accepted, undeliverable, paused)), (key_b, (rehosted,))):
        for row_id in ids:
            post(harness.client.get(f"/v1/messages/{row_id}",
                                    headers={"Authorization": f"Bearer {key}"}))
    post(harness.client.get("/v1/messages/999999", headers={"Authorization": f"Bearer {key_a}"}))
    post(harness.submit("not-a-key", {"channel": PHONE_NUMBER_ID}))


def read_tables(engine: sa.Engine, label: str, capture: Capture) -> list[str]:
    """Every non-encrypted column of every table into `capture`; returns the encrypted
    columns that hold a plaintext secret (they must hold ciphertext only)."""
    plaintext: list[str] = []
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    text = as_text(value)
                    where = f"{label} table {table.name}, column {column}"
                    if column.endswith("_encrypted"):
                        plaintext += [f"{kind} in {where}" for kind, secret in SECRETS.items()
                                      if secret in text]
                    else:
                        capture.add(where, text)
    return plaintext


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def is_sqlite(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def test_no_secret_appears_in_logs_responses_cli_output_or_tables(
        harness: Harness, tenant_db_url: str) -> None:
    capture = Capture()
    tenant_a, tenant_b = setup_tenants(harness, capture, tenant_db_url)
    run_inbound(harness, capture, tenant_a, tenant_b)
    run_outbound(harness, capture, tenant_a, tenant_b)

    for path in ("/healthz", "/readyz"):
        capture.response(harness.client.get(path))
    for path in ("/healthz", "/readyz", "/metrics"):
        capture.response(harness.internal.get(path))
    for args in (["channel", "list"], ["channel", "list", "--json"], ["tenant", "list"],
                 ["tenant", "list", "--json"], ["apikey", "list", "--json"],
                 ["messages", "--tenant", tenant_a, "--json"],
                 ["messages", "--tenant", tenant_b, "--json"],
                 ["messages", "--tenant", tenant_a], ["parked"], ["parked", "--json"],
                 ["dlq", "list"], ["dlq", "list", "--json"]):
        capture.cli(harness, *args)
    listed = [json.loads(line) for line in
              capture.cli(harness, "channel", "list", "--json").splitlines()]
    assert [c["key"] for c in listed if c["paused"]] == [PHONE_NUMBER_ID]

    harness.gateway.stop()  # every log line written
    capture.add("the `wacloud serve` log (stdout and stderr)",
                harness.gateway.log_path.read_text(errors="replace"))
    data_dir = harness.gateway.data_dir
    plaintext: list[str] = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue
        if is_sqlite(path) and not path.name.endswith(("-wal", "-shm", "-journal")):
            engine = sa.create_engine(f"sqlite:///{path}")
            try:
                plaintext += read_tables(engine, f"SQLite {path.relative_to(data_dir)}",
                                         capture)
            finally:
                engine.dispose()
        if path.name != "encryption.key":
            # Raw bytes too: freed pages, WAL frames, temp files, media, anything else.
            capture.add(f"file {path.relative_to(data_dir)} (raw bytes)",
                        path.read_bytes().decode("latin-1"))
    if not tenant_db_url.startswith("sqlite"):
        engine = sa.create_engine(tenant_db_url)
        try:
            plaintext += read_tables(engine, "tenant A's PostgreSQL", capture)
        finally:
            engine.dispose()

    searched = {where for where, _ in capture.texts}
    assert any("serve" in w for w in searched) and any("queues.db" in w for w in searched)
    assert any("table messages" in w for w in searched)
    assert any("table outbound_messages" in w for w in searched)
    assert not plaintext, "secrets stored unencrypted: " + "; ".join(plaintext)
    leaks = capture.leaks(SECRETS)
    assert not leaks, "secrets leaked: " + "; ".join(leaks)
