"""CredentialsBroker over a real SQLite registry with encrypted secrets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry import store as reg
from wacloud.adapters.db.registry.store import Registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Channel, Provider
from wacloud.security.crypto import SecretBox, new_key

GLOBAL_SECRET = "global-app-secret-0001"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme")
    registry.add_tenant("beta")
    try:
        yield registry
    finally:
        engine.dispose()


def make_broker(registry: Registry, tmp_path: Path, *,
                global_secret: str | None = GLOBAL_SECRET) -> CredentialsBroker:
    return CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=3600,
                             global_meta_app_secret=global_secret)


@pytest.fixture
def broker(registry: Registry, tmp_path: Path) -> Iterator[CredentialsBroker]:
    broker = make_broker(registry, tmp_path)
    try:
        yield broker
    finally:
        broker.close()


def add_meta(registry: Registry, key: str, *, waba: str | None, secret: str | None,
             tenant: str = "acme") -> Channel:
    return registry.add_channel(tenant=tenant, provider=Provider.META, key=key,
                                phone_number_id=key, waba_id=waba, token=f"token-{key}",
                                app_secret=secret, verify_token=f"verify-{key}")


def test_lookup_by_provider_and_key(registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="secret-111")
    registry.add_channel(tenant="beta", provider=Provider.WHAPI, key="111", token="whapi-token")

    meta = broker.channel(Provider.META, "111")
    whapi = broker.channel(Provider.WHAPI, "111")

    assert meta is not None and whapi is not None
    assert (meta.tenant, meta.token, meta.app_secret) == ("acme", "token-111", "secret-111")
    assert (whapi.tenant, whapi.token) == ("beta", "whapi-token")
    assert broker.channel(Provider.CHAKRA, "111") is None
    assert broker.channel(Provider.META, "999") is None


def test_waba_fallback_when_exactly_one_meta_channel_has_it(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="s1")

    found = broker.channel(Provider.META, "unknown-pnid", account_key="W1")

    assert found is not None and found.key == "111"
    assert broker.channel(Provider.META, "unknown-pnid") is None
    assert broker.channel(Provider.META, "unknown-pnid", account_key="W-other") is None


def test_no_waba_fallback_when_two_meta_channels_share_it(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W2", secret="s1")
    add_meta(registry, "222", waba="W2", secret="s2")

    assert broker.channel(Provider.META, "unknown-pnid", account_key="W2") is None
    assert broker.channel(Provider.META, "222", account_key="W2") is not None


def test_waba_fallback_only_for_meta_and_counts_only_meta_channels(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W3", secret="s1")
    registry.add_channel(tenant="beta", provider=Provider.CHAKRA, key="plugin-1", waba_id="W3",
                         token="chakra-token")

    found = broker.channel(Provider.META, "unknown-pnid", account_key="W3")

    assert found is not None and found.key == "111"
    assert broker.channel(Provider.CHAKRA, "unknown", account_key="W3") is None
    assert broker.channel(Provider.WHAPI, "unknown", account_key="W3") is None


def test_app_secrets_for_a_named_channel_is_its_secret_plus_global(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="secret-111")
    add_meta(registry, "222", waba="W2", secret="secret-222")

    assert broker.app_secrets_for(Provider.META, {"111"}, set()) == ["secret-111", GLOBAL_SECRET]
    assert broker.app_secrets_for(Provider.META, {"111"}, {"W1"}) == ["secret-111", GLOBAL_SECRET]
    assert broker.app_secrets_for(Provider.META, set(), {"W2"}) == ["secret-222", GLOBAL_SECRET]


def test_app_secrets_for_unknown_ids_is_every_secret_plus_global(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="secret-111")
    add_meta(registry, "222", waba="W2", secret="secret-222")
    add_meta(registry, "333", waba="W3", secret="secret-111")  # shared app: listed once
    registry.add_channel(tenant="beta", provider=Provider.WHAPI, key="wh", token="t",
                         webhook_secret="whapi-hook-secret")

    assert broker.app_secrets_for(Provider.META, {"999"}, {"W9"}) == ["secret-111", "secret-222",
                                                        GLOBAL_SECRET]


def test_app_secrets_for_named_channel_without_secret_is_only_global(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret=None)
    add_meta(registry, "222", waba="W2", secret="secret-222")

    assert broker.app_secrets_for(Provider.META, {"111"}, set()) == [GLOBAL_SECRET]


def test_meta_secrets_without_global_secret(registry: Registry, tmp_path: Path) -> None:
    add_meta(registry, "111", waba="W1", secret="secret-111")
    broker = make_broker(registry, tmp_path, global_secret=None)

    assert broker.app_secrets_for(Provider.META, {"111"}, set()) == ["secret-111"]
    assert broker.app_secrets_for(Provider.META, {"999"}, set()) == ["secret-111"]


def test_refresh_picks_up_a_change_and_ignores_when_unchanged(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="s1")
    assert broker.refresh(force=True) is True
    assert broker.refresh() is False

    channel = add_meta(registry, "222", waba="W2", secret="s2")
    assert broker.channel(Provider.META, "222") is None  # still the old snapshot
    assert broker.refresh() is True
    assert broker.channel(Provider.META, "222") is not None
    assert broker.refresh() is False

    registry.set_channel_pause(channel.id, True, "quality rating red")
    assert broker.refresh() is True
    paused = broker.channel(Provider.META, "222")
    assert paused is not None and paused.paused and paused.pause_reason == "quality rating red"


def test_refresh_reloads_after_the_cache_ages_out(registry: Registry, tmp_path: Path) -> None:
    broker = CredentialsBroker(registry, tenants_dir=tmp_path, cache_seconds=0.0)
    broker.refresh(force=True)

    assert broker.refresh() is True


def test_tenant_store_for_unknown_tenant_raises_key_error(broker: CredentialsBroker) -> None:
    with pytest.raises(KeyError, match="nobody"):
        broker.tenant_store("nobody")


def test_tenant_store_for_known_tenant_is_a_cached_sqlite_file(
        registry: Registry, broker: CredentialsBroker, tmp_path: Path) -> None:
    store = broker.tenant_store("acme")

    assert store is broker.tenant_store("acme")
    assert (tmp_path / "tenants" / "acme.db").is_file()
    assert "messages" in sa.inspect(store.engine).get_table_names()


def test_tenant_added_after_first_snapshot_is_found(
        registry: Registry, broker: CredentialsBroker) -> None:
    broker.refresh(force=True)
    registry.add_tenant("gamma")

    assert broker.tenant_store("gamma").slug == "gamma"


def test_channel_repr_shows_no_secret(registry: Registry, broker: CredentialsBroker) -> None:
    registry.add_channel(tenant="acme", provider=Provider.META, key="111", token="tok-SECRET-1",
                         app_secret="app-SECRET-2", verify_token="verify-SECRET-3",
                         webhook_secret="hook-SECRET-4")

    channel = broker.channel(Provider.META, "111")

    assert channel is not None
    text = repr(channel) + str(channel)
    assert "111" in text
    for secret in ("tok-SECRET-1", "app-SECRET-2", "verify-SECRET-3", "hook-SECRET-4"):
        assert secret not in text


def test_registry_stores_secrets_encrypted(registry: Registry) -> None:
    registry.add_tenant("pg", db_url="postgresql://app:db-PASSWORD@db/pg")
    registry.add_channel(tenant="acme", provider=Provider.META, key="111", token="tok-SECRET-1",
                         app_secret="app-SECRET-2")

    with registry.engine.connect() as conn:
        dump = repr(conn.execute(sa.select(reg.channels)).all())
        dump += repr(conn.execute(sa.select(reg.tenants)).all())

    for secret in ("tok-SECRET-1", "app-SECRET-2", "db-PASSWORD"):
        assert secret not in dump
    assert registry.tenant("pg").db_url == "postgresql://app:db-PASSWORD@db/pg"


def test_uniform_app_secret_only_when_every_channel_shares_one(
        registry: Registry, tmp_path: Path) -> None:
    broker = make_broker(registry, tmp_path, global_secret=None)
    add_meta(registry, "111", waba="W1", secret="shared")
    add_meta(registry, "222", waba="W2", secret="shared", tenant="beta")
    broker.refresh(force=True)
    assert broker.uniform_app_secret(Provider.META) == "shared"

    add_meta(registry, "333", waba="W3", secret=None)  # a channel without one: no shortcut
    broker.refresh(force=True)
    assert broker.uniform_app_secret(Provider.META) is None


def test_uniform_app_secret_counts_the_global_secret(
        registry: Registry, broker: CredentialsBroker) -> None:
    add_meta(registry, "111", waba="W1", secret="secret-111")
    assert broker.uniform_app_secret(Provider.META) is None  # the global one differs
    registry.add_channel(tenant="beta", provider=Provider.WHAPI, key="w1", token="t")
    broker.refresh(force=True)
    assert broker.uniform_app_secret(Provider.META) is None


def test_signature_shortcut_accepts_and_refuses_like_the_full_check(
        registry: Registry, tmp_path: Path) -> None:
    from wacloud.providers import port
    from wacloud.stages.ingest import signature_ok
    from wacloud.testing.webhooks import sign

    meta = port(Provider.META)

    broker = make_broker(registry, tmp_path, global_secret=None)
    add_meta(registry, "111", waba="W1", secret="shared")
    broker.refresh(force=True)
    assert broker.uniform_app_secret(Provider.META) == "shared"
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert signature_ok(meta, body, sign(body, "shared"), broker)
    assert not signature_ok(meta, body, sign(body, "other"), broker)
    assert not signature_ok(meta, body + b" ", sign(body, "shared"), broker)
    assert not signature_ok(meta, body, None, broker)


class _SlowChannels(Registry):
    """A registry whose first `channels()` read waits until released: a rebuild that read the
    registry before a change and finishes after a newer one."""

    def __init__(self, inner: Registry) -> None:
        super().__init__(inner.engine, inner.secrets)
        self.reading = threading.Event()
        self.release = threading.Event()
        self.first = True

    def channels(self) -> list[Channel]:
        found = super().channels()
        if self.first:
            self.first = False
            self.reading.set()
            self.release.wait(10)
        return found


def test_a_slow_older_rebuild_never_replaces_a_newer_snapshot(registry: Registry,
                                                              tmp_path: Path) -> None:
    slow = _SlowChannels(registry)
    broker = CredentialsBroker(slow, tenants_dir=tmp_path / "tenants", cache_seconds=3600)
    try:
        older = threading.Thread(target=broker.refresh, kwargs={"force": True})
        older.start()  # reads the registry without the channel, then waits
        assert slow.reading.wait(10)
        add_meta(registry, "222", waba="W2", secret="s-222")  # a channel added meanwhile
        newer = threading.Thread(target=broker.refresh)  # a stage's look after a miss
        newer.start()
        newer.join(2)  # without one rebuild at a time, it finishes first (not a sync: a bound)
        slow.release.set()
        older.join(10)
        newer.join(10)
        assert broker.tenant_channel("acme", "222") is not None
    finally:
        slow.release.set()
        broker.close()
