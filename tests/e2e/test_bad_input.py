"""Bad webhooks and abusive clients against a real `wacloud serve`: every bad body gets a clear
answer (4xx, or 200 and parked with the reason when it is authentic), a body over the limit is
refused before it is sent, slow and idle clients are cut off after a bounded time, and during
all of it a normal signed webhook is still answered and stored.

Only 127.0.0.1; every socket and thread is closed or joined before a test ends. The slow
clients sleep between bytes because being slow is what is tested, not to wait for anything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.e2e.conftest import Harness, make_harness, wait_for
from wacloud.domain.model import Channel, Provider
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign

KEEP_ALIVE_S = 1.0
REQUEST_TIMEOUT_S = 2.0
MAX_BYTES = 256 * 1024  # the e2e gateway's WACLOUD_MAX_WEBHOOK_BYTES
# A behaviour check, not a speed measurement: the answer comes, and not after the abuse ends.
ANSWER_WITHIN_S = 2.0

pytestmark = pytest.mark.slow


@dataclass
class World:
    harness: Harness
    tenant: str
    meta: Channel
    whapi: Channel
    api_key: str = field(repr=False)
    other: Channel = field(repr=False)  # a second app secret: bodies are then parsed to route

    def signed_text(self, text: str = "oi") -> tuple[bytes, str]:
        wamid = f"wamid.{uuid.uuid4().hex}"
        message, contact = meta_text("5511987654321", text, wamid)
        body = dumps(meta_envelope(self.meta.key, self.meta.waba_id or "", "5511940001234",
                                   [message], None, [contact]))
        return body, wamid

    def post_signed(self, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
        answer = self.harness.client.post(
            "/webhooks/meta", content=body, timeout=10,
            headers={"Content-Type": content_type,
                     "X-Hub-Signature-256": sign(body, self.meta.app_secret or "")})
        return answer.status_code, answer.text

    def stored(self, wamid: str) -> bool:
        return any(r["provider_message_id"] == wamid for r in self.harness.rows(self.tenant))

    def parked_reasons(self) -> list[str]:
        return [item.reason for item in self.harness.parked()]

    def normal_webhook_still_served(self) -> None:
        """A signed webhook is answered 200 within the bound and stored."""
        body, wamid = self.signed_text("still served")
        started = time.monotonic()
        status, text = self.post_signed(body)
        took = time.monotonic() - started
        assert status == 200, text
        assert took < ANSWER_WITHIN_S, f"answered after {took:.2f} s"
        wait_for(lambda: self.stored(wamid), 15, message=f"{wamid} stored")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          fake_server: FakeProviderServer) -> Iterator[World]:
    env = {"WACLOUD_HTTP_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
           "WACLOUD_HTTP_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S)}
    for harness in make_harness(tmp_path_factory.mktemp("bad-input"), fake_server, env):
        tenant = harness.tenant()
        meta = harness.meta_channel(tenant)
        other = harness.meta_channel(tenant)
        whapi = harness.secret_channel(tenant, Provider.WHAPI)
        yield World(harness, tenant, meta, whapi, harness.api_key(tenant), other)


def raw_connection(world: World) -> socket.socket:
    return socket.create_connection(("127.0.0.1", world.harness.gateway.port), timeout=10)


def read_answer(sock: socket.socket, limit_s: float) -> bytes:
    """What the server sends until it closes the connection or `limit_s` passes."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


# -- bodies ----------------------------------------------------------------------------------


DEEP = b"[" * 100_000 + b"]" * 100_000  # under the 256 KiB limit


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"object": "whatsapp_business_account", "entry": [', "not JSON"),
    (b"", "not JSON"),
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b'{"object": "whatsapp_business_account", "entry": NaN}', "NaN"),
    (b'{"object": "whatsapp_business_account", "entry": [{"id": "\\ud800"}]}', "surrogate"),
    (DEEP, "nested deeper"),
])
def test_an_authentic_body_that_cannot_be_understood_is_answered_200_and_parked(
        world: World, body: bytes, reason: str) -> None:
    status, text = world.post_signed(body)

    assert status == 200, text  # Meta signed it: refusing it would only make Meta retry
    wait_for(lambda: any(reason in r for r in world.parked_reasons()), 15,
             message=f"a parked item saying {reason!r}")


@pytest.mark.parametrize("body", [b"", b"{not json", DEEP, b"\xff\xfe", b'{"a": NaN}'])
def test_an_unsigned_bad_body_is_a_401_json_error_never_a_500(world: World,
                                                               body: bytes) -> None:
    answer = world.harness.client.post("/webhooks/meta", content=body,
                                       headers={"X-Hub-Signature-256": "sha256=00"})

    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]


def test_the_content_type_is_not_what_authenticates_a_webhook(world: World) -> None:
    body, wamid = world.signed_text("sent as text/plain")

    assert world.post_signed(body, content_type="text/plain")[0] == 200
    wait_for(lambda: world.stored(wamid), 15, message="the text/plain webhook stored")
    # Whapi: the channel secret in the header authenticates, whatever the content type.
    answer = world.harness.client.post(
        f"/webhooks/whapi/{world.whapi.key}", content=b"not json at all",
        headers={"Authorization": f"Bearer {world.whapi.webhook_secret}",
                 "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200
    wait_for(lambda: any("cannot parse whapi webhook" in r for r in world.parked_reasons()),
             15, message="the Whapi body parked")


def test_a_10_mb_body_is_refused_413_before_it_is_sent(world: World) -> None:
    with contextlib.closing(raw_connection(world)) as sock:
        sock.sendall(b"POST /webhooks/meta HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(10 * 1024 * 1024).encode() + b"\r\n\r\n"
                     + b"{" * 1024)
        answer = read_answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer


def test_a_chunked_body_is_refused_413_once_it_passes_the_limit(world: World) -> None:
    secret = world.whapi.webhook_secret or ""
    with contextlib.closing(raw_connection(world)) as sock:
        sock.sendall(f"POST /webhooks/whapi/{world.whapi.key} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        while sent < 10 * 1024 * 1024 and not answer:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
        answer += read_answer(sock, 1)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 2 * MAX_BYTES, f"{sent} bytes sent before the 413"


# -- slow and idle clients --------------------------------------------------------------------


@dataclass
class SlowClient:
    """Sends `head` then `trickle` one byte per `interval`, until the server answers or closes
    the connection; keeps what it got and when."""

    head: bytes
    trickle: bytes
    interval: float = 0.5
    answer: bytes = b""
    took: float = 0.0
    thread: threading.Thread | None = None

    def start(self, port: int) -> None:
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        started = time.monotonic()
        with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
            s.sendall(self.head)
            s.settimeout(self.interval)
            for byte in self.trickle:
                try:
                    s.sendall(bytes([byte]))
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue  # no answer yet: the next byte
                except OSError:
                    break  # closed by the server
                self.answer += chunk
                if not chunk or self.answer.endswith(b"}"):
                    break
            self.took = time.monotonic() - started

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_slow_clients_get_408_in_bounded_time_while_others_are_served(world: World) -> None:
    port = world.harness.gateway.port
    body, _ = world.signed_text("trickled")
    slow = [
        # The headers one byte at a time (slowloris).
        SlowClient(b"", b"POST /webhooks/meta HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X" * 60),
        # Headers at once, then the body one byte a second (slow POST).
        SlowClient(b"POST /webhooks/meta HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"X-Hub-Signature-256: " + sign(body, world.meta.app_secret or "").encode()
                   + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n", body),
        # The same on the tenant API (a Starlette route).
        SlowClient(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Authorization: Bearer " + world.api_key.encode() + b"\r\n"
                   b"Content-Length: 200\r\n\r\n", b"{" * 200),
    ]
    for client in slow:
        client.start(port)
    try:
        world.normal_webhook_still_served()
    finally:
        for client in slow:
            client.join()
    for client in slow:
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer[:200]
        assert client.took < REQUEST_TIMEOUT_S + 3, f"cut off after {client.took:.1f} s"
    assert "Traceback" not in world.harness.gateway.log_tail(200)


def test_idle_connections_are_closed_and_the_server_keeps_answering(world: World) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            idle.append(raw_connection(world))
        # One that made a request and then stays silent (keep-alive).
        kept = raw_connection(world)
        idle.append(kept)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

        world.normal_webhook_still_served()

        for sock in idle:
            sock.setblocking(False)

        def all_closed() -> bool:
            open_ = 0
            for sock in idle:
                try:
                    while sock.recv(65536):
                        pass
                except BlockingIOError:
                    open_ += 1
                except OSError:
                    pass
            return open_ == 0
        wait_for(all_closed, KEEP_ALIVE_S + 15, interval=0.2,
                 message="the server closing every idle connection")
    finally:
        for sock in idle:
            sock.close()
    world.normal_webhook_still_served()


def test_a_webhook_on_a_connection_kept_alive_is_served(world: World) -> None:
    """The idle deadline does not cut a client that sends at a normal pace."""
    body, wamid = world.signed_text("kept alive")
    for _ in range(3):
        assert world.post_signed(body)[0] == 200
    wait_for(lambda: world.stored(wamid), 15, message="stored")
