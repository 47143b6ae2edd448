"""The credentials service (the core of POST /internal/credentials and the Lambda handler)
over a real SQLite registry: service-key authentication, lookups by every provider id, and
an audit row for every authenticated call that never holds a secret."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from wacloud.adapters.db.registry.api_keys import (
    active_key_hashes,
    create_api_key,
    match_service_key,
    revoke_api_key,
)
from wacloud.adapters.db.registry.audit import list_audit
from wacloud.adapters.db.registry.store import Registry, credential_audit
from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.credentials.service import CredentialsService, parse_query
from wacloud.domain.model import Provider
from wacloud.hosting import lambda_credentials
from wacloud.settings import Settings, load_settings

TOKEN = "EAAG-broker-token-8812"
DB_URL = "postgresql+psycopg://u:db-password-8812@db/globex"
SECRETS = (TOKEN, "app-secret-8812", "verify-8812", "hook-8812", "db-password-8812",
           "whapi-token-8812", "chakra-token-8812")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("WACLOUD_ENCRYPTION_KEY", "WACLOUD_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(tmp_path / "data")
    init_data_dir(settings)
    return settings


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    registry = open_registry(settings)
    registry.add_tenant("acme")
    registry.add_tenant("globex", DB_URL)
    registry.add_channel(tenant="acme", provider=Provider.META, key="106540352242922",
                         phone_number_id="106540352242922", waba_id="102290129340398",
                         token=TOKEN, app_secret="app-secret-8812", verify_token="verify-8812")
    registry.add_channel(tenant="globex", provider=Provider.WHAPI, key="MANTIS-M72HC",
                         token="whapi-token-8812", webhook_secret="hook-8812",
                         api_base_url="https://whapi.example")
    registry.add_channel(tenant="globex", provider=Provider.CHAKRA, key="7b1c-plugin",
                         phone_number_id="106540352249999", token="chakra-token-8812",
                         webhook_secret="hook-8812")
    try:
        yield registry
    finally:
        registry.engine.dispose()


@pytest.fixture
def service(registry: Registry, settings: Settings) -> Iterator[CredentialsService]:
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir, cache_seconds=30)
    try:
        yield CredentialsService(broker, settings.tenants_dir)
    finally:
        broker.close()


@pytest.fixture
def service_key(registry: Registry) -> str:
    return create_api_key(registry, tenant=None, service=True, label="sender-worker")[1]


def ask(service: CredentialsService, key: str | None, body: Any) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = service.handle(f"Bearer {key}" if key else None, raw, via="http",
                            source="10.0.0.7")
    return answer.status, answer.body


def audit_text(registry: Registry) -> str:
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(credential_audit)).mappings().all()
    return json.dumps([dict(r) for r in rows], default=str)


def test_disabled_without_a_service_key(service: CredentialsService,
                                        registry: Registry) -> None:
    tenant_key = create_api_key(registry, tenant="acme")[1]
    assert ask(service, tenant_key, {"provider": "meta", "id": "106540352242922"})[0] == 404
    assert list_audit(registry) == []


def test_missing_wrong_revoked_and_tenant_keys_are_refused_counted_and_not_audited(
        service: CredentialsService, registry: Registry, service_key: str) -> None:
    body = {"provider": "meta", "id": "106540352242922"}
    tenant_key = create_api_key(registry, tenant="acme")[1]
    admin_key = create_api_key(registry, tenant=None, admin=True)[1]
    old = create_api_key(registry, tenant=None, service=True, label="old")
    revoke_api_key(registry, old[0].id)

    before = {outcome: REGISTRY.get_sample_value(
        "wacloud_credentials_unauthenticated_total", {"via": "http", "outcome": outcome}) or 0.0
        for outcome in ("unauthenticated", "denied")}
    assert ask(service, None, body)[0] == 401
    assert ask(service, "wsk_" + "x" * 43, body)[0] == 403
    assert ask(service, tenant_key, body)[0] == 403
    assert ask(service, admin_key, body)[0] == 403
    assert ask(service, old[1], body)[0] == 403
    status, answer = ask(service, service_key, body)
    assert status == 200 and answer["token"] == TOKEN

    # Only the authenticated call is in the audit: strangers cannot grow the registry.
    rows = list_audit(registry)
    assert [(r["status"], r["outcome"]) for r in rows] == [(200, "ok")]
    assert all(r["provider"] == "meta" and r["lookup_id"] == "106540352242922" for r in rows)
    assert all(r["via"] == "http" and r["source"] == "10.0.0.7" for r in rows)
    assert rows[0]["key_id"] is not None
    after = {outcome: REGISTRY.get_sample_value(
        "wacloud_credentials_unauthenticated_total", {"via": "http", "outcome": outcome}) or 0.0
        for outcome in ("unauthenticated", "denied")}
    assert after["unauthenticated"] - before["unauthenticated"] == 1
    assert after["denied"] - before["denied"] == 4
    assert rows[-1]["key_label"] == "sender-worker"
    assert rows[-1]["key_prefix"] == service_key[:12]
    assert (rows[-1]["tenant"], rows[-1]["channel_key"]) == ("acme", "106540352242922")
    text = audit_text(registry)
    for secret in (*SECRETS, service_key, tenant_key, admin_key, old[1]):
        assert secret not in text


def test_every_provider_id_resolves_to_its_channel_and_tenant_db(
        service: CredentialsService, service_key: str, settings: Settings) -> None:
    status, meta = ask(service, service_key, {"provider": "meta", "id": "106540352242922"})
    assert status == 200
    assert meta == {
        "tenant": "acme", "channel": "106540352242922", "channel_id": meta["channel_id"],
        "provider": "meta", "phone_number_id": "106540352242922",
        "waba_id": "102290129340398", "base_url": "https://graph.facebook.com",
        "graph_version": "v23.0", "paused": False, "pause_reason": None, "token": TOKEN,
        "db_url": f"sqlite:///{(settings.tenants_dir / 'acme.db').resolve()}"}
    by_waba = ask(service, service_key, {"provider": "meta", "id": "102290129340398"})
    assert by_waba[0] == 200 and by_waba[1]["channel"] == "106540352242922"
    whapi = ask(service, service_key, {"provider": "whapi", "id": "MANTIS-M72HC"})[1]
    assert (whapi["tenant"], whapi["token"], whapi["db_url"], whapi["base_url"]) == (
        "globex", "whapi-token-8812", DB_URL, "https://whapi.example")
    chakra = ask(service, service_key, {"provider": "chakra", "id": "7b1c-plugin"})[1]
    assert chakra["token"] == "chakra-token-8812" and chakra["base_url"].startswith("https://")
    # Ids are per provider: a Whapi id asked as Meta is not found.
    assert ask(service, service_key, {"provider": "meta", "id": "MANTIS-M72HC"})[0] == 404


def test_a_token_change_is_seen_at_once(service: CredentialsService, registry: Registry,
                                        service_key: str) -> None:
    body = {"provider": "whapi", "id": "MANTIS-M72HC"}
    assert ask(service, service_key, body)[1]["token"] == "whapi-token-8812"
    channel = registry.channel_by_key(Provider.WHAPI, "MANTIS-M72HC")
    registry.set_channel_token(channel.id, "whapi-token-rotated")
    assert ask(service, service_key, body)[1]["token"] == "whapi-token-rotated"


@pytest.mark.parametrize(("body", "problem"), [
    (b"not json", "JSON object"), (b"[1]", "JSON object"),
    ({"provider": "telegram", "id": "1"}, "provider"), ({"provider": "meta"}, "id"),
    ({"provider": "meta", "id": 5}, "id")])
def test_bad_bodies_are_400_and_audited(service: CredentialsService, registry: Registry,
                                        service_key: str, body: Any, problem: str) -> None:
    status, answer = ask(service, service_key, body)
    assert status == 400 and problem in answer["error"]
    assert list_audit(registry)[-1]["outcome"] == "bad_request"


def test_unknown_id_is_404_and_audited(service: CredentialsService, registry: Registry,
                                       service_key: str) -> None:
    assert ask(service, service_key, {"provider": "whapi", "id": "NOPE-1"})[0] == 404
    row = list_audit(registry)[-1]
    assert (row["outcome"], row["lookup_id"], row["tenant"]) == ("not_found", "NOPE-1", None)


def test_service_keys_never_open_the_tenant_api(registry: Registry, service_key: str) -> None:
    assert match_service_key(registry, service_key) is not None
    assert match_service_key(registry, service_key + "x") is None
    assert all(not k.is_service for k in active_key_hashes(registry).values())


def test_parse_query_keeps_what_was_asked_even_when_invalid() -> None:
    query = parse_query(b'{"provider": "telegram", "id": "abc"}')
    assert (query.provider, query.lookup_id) == ("telegram", "abc") and query.problem


def test_lambda_handler_takes_proxy_and_direct_events(
        registry: Registry, settings: Settings, service_key: str) -> None:
    handle = lambda_credentials.build_handler(settings)
    body = json.dumps({"provider": "meta", "id": "106540352242922"})
    proxy = handle({"headers": {"Authorization": f"Bearer {service_key}"}, "body": body,
                    "requestContext": {"http": {"sourceIp": "10.1.2.3"}}}, None)
    assert proxy["statusCode"] == 200 and json.loads(proxy["body"])["token"] == TOKEN
    encoded = handle({"headers": {"authorization": f"Bearer {service_key}"},
                      "body": base64.b64encode(body.encode()).decode(),
                      "isBase64Encoded": True}, None)
    assert encoded["statusCode"] == 200
    direct = handle({"provider": "whapi", "id": "MANTIS-M72HC",
                     "headers": {"Authorization": f"Bearer {service_key}"}}, None)
    assert json.loads(direct["body"])["tenant"] == "globex"
    denied = handle({"provider": "whapi", "id": "MANTIS-M72HC"}, None)
    assert denied["statusCode"] == 401 and "token" not in json.loads(denied["body"])
    rows = list_audit(registry)
    assert [r["via"] for r in rows] == ["lambda"] * 3  # the unauthenticated one is counted
    assert rows[0]["source"] == "10.1.2.3"
    assert TOKEN not in audit_text(registry)


def test_lambda_entry_point_reads_settings_from_the_environment(
        registry: Registry, settings: Settings, service_key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_DATA_DIR", str(settings.data_dir))
    lambda_credentials._default_handler.cache_clear()
    try:
        answer = lambda_credentials.handler({
            "provider": "chakra", "id": "7b1c-plugin",
            "headers": {"Authorization": f"Bearer {service_key}"}}, object())
    finally:
        lambda_credentials._default_handler.cache_clear()
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"])["token"] == "chakra-token-8812"
