"""Webhook receivers as plain ASGI: the hot path, kept free of framework layers.

All of `/webhooks/*` is answered here, for every provider of the registry
(`wacloud.providers.PROVIDERS`), by how it authenticates its webhooks: a signed-body
provider's path (`POST /webhooks/meta`, and its GET verification handshake) or a
channel-secret provider's per-channel path (`POST /webhooks/whapi/{channel_id}`,
`/webhooks/chakra/{plugin_id}`). Every other request goes to the Starlette app.

A webhook is answered 200 only after its raw body is durably queued (the SQLite queue's group
commit makes that cheap under concurrency), so a crash right after the answer loses nothing;
while the queue is full or the disk nearly so (`hosting.backpressure`) it is answered 503 with
Retry-After, and so is a webhook the queue failed to take (a broker that is unreachable). A
signed body of another product (Meta: `object` "page", "instagram", ...) is answered 200 and
only counted, unless `WACLOUD_PARK_OTHER_META_OBJECTS` asks to queue (and so park) it.
Measured with `bench/ingest.py`: routing through Starlette cost about a fifth of the CPU of
each webhook.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from wacloud.adapters.queue.base import Queue
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.backpressure import RETRY_AFTER_S, IngestGate
from wacloud.observability.metrics import META_OTHER_OBJECTS, WEBHOOKS
from wacloud.providers import PROVIDERS
from wacloud.providers.base import ProviderPort, WebhookAuth
from wacloud.stages.ingest import raw_output, shared_secret_ok, signature_ok, verify_challenge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

# A webhook the queue did not take: the provider is asked to come back soon (a broker outage is
# usually seconds: a restart, a failover), and the log says so once per period, not per webhook.
ENQUEUE_RETRY_AFTER_S = 5
ENQUEUE_WARNING_EVERY_S = 10.0

JSON_HEADERS = [(b"content-type", b"application/json")]
TEXT_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]
OK_BODY = b'{"ok":true}'


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SignedRoute:
    """A signed-body provider's webhook path: its port, its signature header (lower case, as
    ASGI gives headers) and the answer to a body without a valid signature."""

    provider: ProviderPort
    signature_header: bytes
    refusal: str


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes,
                  extra_headers: list[tuple[bytes, bytes]] | None = None,
                  content_type: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    # With a length uvicorn sends the body as is, not as chunked transfer encoding.
    headers = [*content_type, (b"content-length", str(len(body)).encode()),
               *(extra_headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def secret_from(scope: Scope) -> str | None:
    """Whapi/Chakra secret: `Authorization: Bearer SECRET` or `?token=SECRET`."""
    auth = header(scope, b"authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    query = scope.get("query_string", b"")
    if b"token=" in query:
        values = parse_qs(query.decode("latin-1")).get("token")
        return values[0] if values else None
    return None


class WebhookReceiver:
    """Wraps the rest of the HTTP app; answers provider webhooks itself."""

    def __init__(self, fallback: ASGIApp, broker: CredentialsBroker, raw_queue: Queue,
                 max_bytes: int, park_other_objects: bool = False,
                 gate: IngestGate | None = None) -> None:
        self.fallback = fallback
        self.gate = gate
        self.park_other_objects = park_other_objects
        self.broker = broker
        self.raw_queue = raw_queue
        self.max_bytes = max_bytes
        self._accepted = {p: WEBHOOKS.labels(p.value, "accepted") for p in Provider}
        self._last_enqueue_warning = -float("inf")
        # The routes, from the registry once: an exact path per signed-body provider, a
        # prefix (followed by the channel key) per channel-secret one.
        self._signed: dict[bytes, SignedRoute] = {}
        self._keyed: list[tuple[bytes, ProviderPort]] = []
        for provider in PROVIDERS.values():
            path = provider.webhook_path.encode()
            if provider.webhook_auth is WebhookAuth.SIGNED_BODY:
                name = provider.signature_header or ""
                self._signed[path] = SignedRoute(provider, name.encode(),
                                                 f"missing or invalid {_header_name(name)}")
            else:
                self._keyed.append((path, provider))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: bytes = scope.get("raw_path") or scope["path"].encode()
            signed = self._signed.get(path)
            if scope["method"] == "POST":
                if signed is not None:
                    return await self.signed_body(signed, scope, receive, send)
                for prefix, provider in self._keyed:
                    if path.startswith(prefix) and b"/" not in path[len(prefix):]:
                        key = scope["path"][len(prefix):]
                        return await self.with_secret(provider.provider, key, scope, receive,
                                                      send)
            elif signed is not None:
                return await self.handshake(signed, scope, send)
        await self.fallback(scope, receive, send)

    async def handshake(self, route: SignedRoute, scope: Scope, send: Send) -> None:
        """GET on a signed-body provider's path: the provider proves the URL is ours (Meta's
        `hub.challenge`). Other methods than GET, HEAD and POST are not allowed."""
        if scope["method"] not in ("GET", "HEAD"):
            return await respond(send, 405, b"Method Not Allowed",
                                 [(b"allow", b"GET, HEAD, POST")], TEXT_HEADERS)
        # Like Starlette's query parameters: blank values kept, the last of a name wins.
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True))
        answer = verify_challenge(route.provider, query, self.broker)
        if answer is None:
            return await respond(send, 403, b"forbidden", None, TEXT_HEADERS)
        await respond(send, 200, answer.encode(), None, TEXT_HEADERS)

    async def refuse(self, send: Send, provider: Provider, status: int, reason: str) -> None:
        WEBHOOKS.labels(provider.value, str(status)).inc()
        # A 413 is sent as soon as the size is known; what else of that body comes is
        # discarded unbuffered (closing instead would reset a client still sending, before it
        # reads the answer), within the request read deadline.
        await respond(send, status, json.dumps({"error": reason}).encode())

    def admit(self) -> bool:
        """The hot path's check: one cached reading (see `hosting.backpressure`)."""
        return self.gate is None or self.gate.admit()

    async def refused(self, send: Send, provider: Provider) -> bool:
        """For a webhook `admit` refused: True after answering 503 + Retry-After if a fresh
        reading still refuses it. Before the body is read, which then is not buffered."""
        gate = self.gate
        if gate is None or await gate.admit_fresh():
            return False
        WEBHOOKS.labels(provider.value, "503").inc()
        await respond(send, 503, json.dumps({"error": f"busy: {gate.reason}; retry later"})
                      .encode(), [(b"retry-after", str(RETRY_AFTER_S).encode())])
        return True

    async def accept(self, send: Send, provider: Provider, body: bytes,
                     channel_key: str | None, signature: str | None = None) -> None:
        try:
            await self.raw_queue.send(
                raw_output(provider, body, channel_key, signature).message.body)
        except Exception as exc:
            # Not durably queued (the broker is unreachable, a confirm was lost, the disk is
            # full): a 200 would lose it, a 503 makes the provider send it again. A copy that
            # did reach the queue is stored once (rows are unique by provider message id).
            return await self.unavailable(send, provider, exc)
        self._accepted[provider].inc()
        await respond(send, 200, OK_BODY)

    async def unavailable(self, send: Send, provider: Provider, exc: Exception) -> None:
        WEBHOOKS.labels(provider.value, "503").inc()
        now = time.monotonic()
        if now - self._last_enqueue_warning >= ENQUEUE_WARNING_EVERY_S:  # not one per webhook
            self._last_enqueue_warning = now
            # The type only: a library's message may hold the broker's URL and password.
            log.warning("webhooks answered 503: the queue did not take them (%s)",
                        type(exc).__name__)
        await respond(send, 503, json.dumps({"error": "the queue is unavailable; retry later"})
                      .encode(), [(b"retry-after", str(ENQUEUE_RETRY_AFTER_S).encode())])

    async def signed_body(self, route: SignedRoute, scope: Scope, receive: Receive,
                          send: Send) -> None:
        provider = route.provider
        name = provider.provider
        if not self.admit() and await self.refused(send, name):
            return
        try:
            body = await read_body(scope, receive, self.max_bytes)
        except BodyTooLarge:
            return await self.refuse(send, name, 413, f"body over {self.max_bytes} bytes")
        except ConnectionError:  # gone, or cut off by the read deadline: nobody to answer
            return
        signature = header(scope, route.signature_header)
        # The worker checks each entry again, with the secret of the channel it routes to.
        if not signature_ok(provider, body, signature, self.broker):
            return await self.refuse(send, name, 401, route.refusal)
        if not self.park_other_objects:
            other = provider.other_object(body)
            if other is not None:  # another product on the same callback URL
                META_OTHER_OBJECTS.labels(other).inc()
                WEBHOOKS.labels(name.value, "other_object").inc()
                return await respond(send, 200, OK_BODY)
        await self.accept(send, name, body, None, signature)

    async def with_secret(self, provider: Provider, key: str, scope: Scope, receive: Receive,
                          send: Send) -> None:
        channel = self.broker.channel(provider, key)
        # The secret is checked before the body is read: strangers cannot make us buffer.
        if not shared_secret_ok(channel.webhook_secret if channel else None, secret_from(scope)):
            return await self.refuse(send, provider, 401,
                                     "unknown channel or wrong webhook secret")
        if not self.admit() and await self.refused(send, provider):
            return
        try:
            body = await read_body(scope, receive, self.max_bytes)
        except BodyTooLarge:
            return await self.refuse(send, provider, 413, f"body over {self.max_bytes} bytes")
        except ConnectionError:
            return
        await self.accept(send, provider, body, key)


def _header_name(lower: str) -> str:
    """A header's name as providers document it ("x-hub-signature-256" ->
    "X-Hub-Signature-256"), for error answers."""
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))
