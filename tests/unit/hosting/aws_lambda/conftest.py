"""A Lambda container per test: settings from the environment, like a deployed function, with
SQLite queues, SQLite tenant databases and the fake provider over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.hosting.aws_lambda.harness import EventSourceMapping, LambdaWorld
from wacloud.bootstrap import init_data_dir, open_registry, queue_specs
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.aws_lambda import runtime
from wacloud.security.crypto import new_key
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

TOKEN = "lambda-test-token"
PNID = "106540352240001"
WABA = "102290129340001"
APP_SECRET = "lambda-app-secret-5150"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as server:
        yield server


def lambda_environment(data_dir: Path) -> dict[str, str]:
    return {
        "WACLOUD_DATA_DIR": str(data_dir),
        "WACLOUD_ENCRYPTION_KEY": new_key(),
        "WACLOUD_DEV_ALLOW_LOCAL_URLS": "1",
        "WACLOUD_REGISTRY_POLL_S": "0",  # every invocation sees the registry as it is
        "WACLOUD_SEND_BACKOFF_BASE_S": "0.2",
        "WACLOUD_SEND_BACKOFF_MAX_S": "0.4",
        "WACLOUD_MEDIA_BACKOFF_BASE_S": "0.2",
        "WACLOUD_MEDIA_BACKOFF_MAX_S": "0.4",
        "WACLOUD_PAIR_BURST": "1000",
    }


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          fake_server: FakeProviderServer) -> Iterator[LambdaWorld]:
    import os

    for name in [n for n in os.environ if n.startswith("WACLOUD_")]:
        monkeypatch.delenv(name)
    for name, value in lambda_environment(tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    fake_server.provider.reset()
    settings = load_settings()
    init_data_dir(settings)
    registry = open_registry(settings)
    registry.add_tenant("acme")
    channel = registry.add_channel(
        tenant="acme", provider=Provider.META, key=PNID, phone_number_id=PNID, waba_id=WABA,
        display_number="5511940001234", token=TOKEN, app_secret=APP_SECRET,
        verify_token="lambda-verify-token", api_base_url=fake_server.base_url)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir, cache_seconds=0)
    runtime.reset()
    try:
        yield LambdaWorld(registry, broker, fake_server.provider, fake_server.base_url,
                          channel)
    finally:
        runtime.reset()
        broker.close()
        registry.engine.dispose()
        fake_server.provider.reset()


@pytest.fixture
def sqs(world: LambdaWorld, aws_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> EventSourceMapping:
    """The world's functions on SQS and S3 (moto's server): queues and bucket of their own,
    made as the SAM template makes them (`wacloud queues create` makes the same)."""
    import uuid

    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("WACLOUD_QUEUE_URL", f"sqs://?prefix=lambda-{tag}")
    monkeypatch.setenv("WACLOUD_MEDIA_URL", f"s3://wacloud-lambda-{tag}/media")
    app = world.app  # built now, on SQS and S3
    app.run(app.gateway.queue_broker.create_queues(list(queue_specs(app.settings).values())))
    app.run(app.gateway.media_store.ensure_bucket())  # type: ignore[attr-defined]
    return EventSourceMapping(f"lambda-{tag}")
