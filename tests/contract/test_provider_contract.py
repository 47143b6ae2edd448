"""The provider port's contract, written once and run against every provider of the registry
(`wacloud.providers.PROVIDERS`) with its fixtures in `tests/fixtures/<provider>/`:

- every webhook fixture (`*.json`) parses without error, into events that carry the
  provider and a channel (the URL's, for providers that put the channel in the URL: its key
  is `channel_key.txt` of the fixture folder) and cross a queue as dicts unchanged;
- every send answer (`send/*.json`) classifies: `error*` and `not_*` answers, and each case
  of a table of `{status, body}` cases, are not accepted and carry an error; `upload*`
  answers are re-hosting answers (`read_upload`); every other answer is a 200 that is
  accepted;
- webhook authentication, through the real webhook receiver, a real registry and a real
  queue: a correctly signed (or secret-bearing) fixture body is queued, a tampered one (body
  changed after signing, or a wrong secret) is refused with 401 and not queued;
- the media request of every media message goes to a host the channel's SSRF allow list
  permits (its API origin or its provider's media hosts), with a token only for the API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.queue.base import Queue, QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Channel,
    InboundMessage,
    Provider,
    SendOutcome,
    event_from_dict,
)
from wacloud.hosting.webhooks import WebhookReceiver
from wacloud.providers import PROVIDERS
from wacloud.providers import port as port_of
from wacloud.providers.base import ProviderPort, UploadError, WebhookAuth
from wacloud.security.crypto import SecretBox, new_key
from wacloud.security.urlpolicy import DEFAULT_PORTS, HostAllowList
from wacloud.stages.envelopes import RawWebhook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRET = "contract-secret-0123456789"
TOKEN = "contract-token-0123456789"


def webhook_fixtures(provider: Provider) -> list[Path]:
    return sorted((FIXTURES / provider.value).glob("*.json"))


def send_fixtures(provider: Provider) -> list[Path]:
    return sorted((FIXTURES / provider.value / "send").glob("*.json"))


def fixture_channel_key(provider: ProviderPort) -> str | None:
    """The channel key a fixture's URL names (None on a signed-body provider's one path)."""
    if provider.webhook_auth is WebhookAuth.SIGNED_BODY:
        return None
    return (FIXTURES / provider.provider.value / "channel_key.txt").read_text().strip()


def cases(kind: str) -> list[Any]:
    """(provider, fixture) pairs of every provider, named for the test id."""
    listed = webhook_fixtures if kind == "webhook" else send_fixtures
    return [pytest.param(provider, path, id=f"{provider.value}-{path.stem}")
            for provider in PROVIDERS for path in listed(provider)]


def test_every_provider_has_webhook_and_send_fixtures() -> None:
    for provider in PROVIDERS:
        assert webhook_fixtures(provider), f"no webhook fixtures for {provider.value}"
        assert send_fixtures(provider), f"no send fixtures for {provider.value}"


def test_ports_describe_themselves() -> None:
    paths = set()
    for provider, port in PROVIDERS.items():
        assert port.provider is provider
        assert port.default_base_url.startswith("https://")
        assert port.media_hosts
        assert port.webhook_path.startswith("/webhooks/")
        paths.add(port.webhook_path)
        if port.webhook_auth is WebhookAuth.SIGNED_BODY:
            assert port.signature_header and port.signature_header == port.signature_header.lower()
        else:
            assert port.webhook_path.endswith("/")
        channel = Channel(id=1, tenant="t", provider=provider, key="k1")
        assert channel.base_url == port.default_base_url
    assert len(paths) == len(PROVIDERS)  # no two providers share a webhook path


def test_the_registry_finds_a_port_by_value_or_name_and_refuses_strangers() -> None:
    for provider, found in PROVIDERS.items():
        assert port_of(provider) is found and port_of(provider.value) is found
    with pytest.raises(ValueError, match="not a provider"):
        port_of("telegram")  # a queued header naming no provider: its webhook is parked


@pytest.mark.parametrize(("provider", "path"), cases("webhook"))
def test_every_webhook_fixture_parses_into_events_of_its_provider_and_channel(
        provider: Provider, path: Path) -> None:
    port = PROVIDERS[provider]
    key = fixture_channel_key(port)
    events = port.parse_webhook(json.loads(path.read_bytes()), key)
    assert events, "a fixture brings at least one event"
    for event in events:
        assert event.provider is provider
        assert event.channel_key
        if key is not None:
            assert event.channel_key == key
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def _table(data: Any) -> list[tuple[int, Any]] | None:
    """The cases of a table fixture ({name: {status, body}}), or None."""
    if isinstance(data, dict) and data and all(
            isinstance(v, dict) and set(v) == {"status", "body"} for v in data.values()):
        return [(case["status"], case["body"]) for case in data.values()]
    return None


@pytest.mark.parametrize(("provider", "path"), cases("send"))
def test_every_send_fixture_classifies(provider: Provider, path: Path) -> None:
    port = PROVIDERS[provider]
    body = path.read_bytes()
    table = _table(json.loads(body))
    if table is not None:
        for status, case in table:
            result = port.classify(status, json.dumps(case).encode(), {}, secrets=[TOKEN])
            assert result.outcome is not SendOutcome.ACCEPTED and result.error is not None
        return
    if path.stem.startswith("upload"):
        if path.stem.startswith("upload_error"):
            with pytest.raises(UploadError):
                port.read_upload(400, body)
        else:
            assert urlsplit(port.read_upload(200, body)).scheme == "https"
        return
    refused = path.stem.startswith(("error", "not_"))
    result = port.classify(400 if refused else 200, body, {}, secrets=[TOKEN])
    if refused:
        assert result.outcome is not SendOutcome.ACCEPTED
        assert result.error is not None and result.error.code
    else:
        assert result.outcome is SendOutcome.ACCEPTED, result
        assert result.error is None


@dataclass
class Gateway:
    registry: Registry
    receiver: WebhookReceiver
    raw_queue: Queue


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A real registry (one channel per channel-secret provider, with the webhook secret; the
    signed-body providers' app secret as the global one), broker, queue and receiver."""
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme")
    for port in PROVIDERS.values():
        key = fixture_channel_key(port)
        if key is not None:
            registry.add_channel(tenant="acme", provider=port.provider, key=key, token=TOKEN,
                                 phone_number_id="106540352242999", webhook_secret=SECRET)
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0,
                               global_meta_app_secret=SECRET)
    queues = SqliteBroker(tmp_path / "queues.db")
    raw_queue = queues.queue(QueueSpec("inbound.raw"))
    try:
        yield Gateway(registry, WebhookReceiver(Starlette(), broker, raw_queue, 1 << 20),
                      raw_queue)
    finally:
        await queues.close()
        broker.close()
        engine.dispose()


def _request(port: ProviderPort, body: bytes, signed: bytes, secret: str
             ) -> tuple[str, dict[str, str]]:
    """(path, headers) of a webhook of `port` carrying `body`, authenticated for `signed`."""
    key = fixture_channel_key(port)
    if port.webhook_auth is WebhookAuth.SIGNED_BODY:
        assert port.signature_header is not None
        return port.webhook_path, {port.signature_header: port.sign(signed, secret)}
    assert key is not None
    return port.channel_webhook_path(key), {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("provider", list(PROVIDERS), ids=lambda p: p.value)
async def test_webhook_auth_accepts_a_signed_body_and_refuses_a_tampered_one(
        gateway: Gateway, provider: Provider) -> None:
    port = PROVIDERS[provider]
    bodies = [path.read_bytes() for path in webhook_fixtures(provider)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.receiver),
                                 base_url="http://gw") as client:
        for body in bodies:
            if port.webhook_auth is WebhookAuth.SIGNED_BODY:  # changed after it was signed
                path, headers = _request(port, body + b" ", body, SECRET)
            else:  # the channel's secret is all a channel-secret webhook carries
                path, headers = _request(port, body, body, SECRET + "-wrong")
            forged = await client.post(path, content=body + b" ", headers=headers)
            assert forged.status_code == 401, forged.text
            path, headers = _request(port, body, body, SECRET)
            answer = await client.post(path, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
    queued = await gateway.raw_queue.receive(len(bodies) + 5)
    assert [RawWebhook.decode(m.body).body for m in queued] == bodies
    assert {RawWebhook.decode(m.body).provider for m in queued} == {provider.value}


def _media_messages() -> Iterator[Any]:
    for provider, port in PROVIDERS.items():
        key = fixture_channel_key(port)
        for path in webhook_fixtures(provider):
            for event in port.parse_webhook(json.loads(path.read_bytes()), key):
                if isinstance(event, InboundMessage) and event.media is not None:
                    yield pytest.param(provider, event, id=f"{provider.value}-{path.stem}")


@pytest.mark.parametrize(("provider", "message"), list(_media_messages()))
def test_media_requests_point_at_the_providers_media_hosts(
        provider: Provider, message: InboundMessage) -> None:
    port = PROVIDERS[provider]
    assert message.media is not None
    channel = Channel(id=1, tenant="acme", provider=provider, key=message.channel_key,
                      phone_number_id="106540352242999", token=TOKEN)
    lookup = port.media_lookup(channel, message.media)
    request = lookup or port.media_download(channel, message.media)
    parts = urlsplit(request.url)
    default_port = DEFAULT_PORTS[parts.scheme]
    allowed = HostAllowList.for_channel(channel)
    assert parts.scheme == "https"
    assert allowed.permits(parts.hostname or "", parts.port or default_port, default_port)
    api = urlsplit(channel.base_url)
    if request.headers.get("Authorization"):  # the token only travels to the API's origin
        assert parts.hostname == api.hostname
