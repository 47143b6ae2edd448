"""The registry's own calls on every registry database: tenants, channels (secrets encrypted
and back), pausing and tokens, the change counter, channel health and parked payloads.

Every test runs once per database through the `tenant_db_url` fixture (tests/conftest.py),
which gives a fresh, empty database. Service keys, the audit and re-encryption are in
`test_credentials_registry_contract.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry, RegistryError
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, new_key


@pytest.fixture
def registry(tenant_db_url: str) -> Iterator[Registry]:
    registry = Registry(create_engine(tenant_db_url), SecretBox([new_key()]))
    registry.create_schema()
    try:
        yield registry
    finally:
        registry.engine.dispose()


def test_create_schema_twice_keeps_the_change_counter(registry: Registry) -> None:
    registry.add_tenant("acme")
    version = registry.version()
    registry.create_schema()  # another process starting
    assert registry.version() == version


def test_tenants_round_trip_with_their_encrypted_database_url(registry: Registry) -> None:
    before = registry.version()
    registry.add_tenant("zeta")
    acme = registry.add_tenant("acme", "postgresql://u:secret-pw@db/acme")
    assert registry.version() == before + 2  # each change bumps the counter
    assert [t.slug for t in registry.tenants()] == ["acme", "zeta"]  # by slug
    assert registry.tenant("acme") == acme
    assert registry.tenant("acme").db_url == "postgresql://u:secret-pw@db/acme"
    assert registry.tenant("zeta").db_url is None
    with registry.engine.connect() as conn:  # the URL is stored encrypted, never in clear
        stored = conn.exec_driver_sql("SELECT db_url_encrypted FROM tenants").scalars().all()
    assert not any("secret-pw" in str(value) for value in stored)
    with pytest.raises(RegistryError, match="already exists"):
        registry.add_tenant("acme")
    with pytest.raises(RegistryError, match="unknown tenant"):
        registry.tenant("nobody")


def test_channels_round_trip_by_id_key_and_tenant(registry: Registry) -> None:
    registry.add_tenant("acme")
    registry.add_tenant("beta")
    meta = registry.add_channel(
        tenant="acme", provider=Provider.META, key="1065", token="tok-meta",
        phone_number_id="1065", waba_id="2290", display_number="+55 11 4000-1234",
        api_base_url="http://graph.local", mps=20, app_secret="app-s", verify_token="vt",
        media_hosts=["Media.Example.com"])
    whapi = registry.add_channel(tenant="beta", provider=Provider.WHAPI, key="CH-1",
                                 token="tok-whapi", webhook_secret="wh-s")
    assert registry.channel_by_id(meta.id) == meta
    assert registry.channel_by_key(Provider.WHAPI, "CH-1") == whapi
    assert (meta.tenant, meta.token, meta.app_secret, meta.verify_token, meta.mps) == (
        "acme", "tok-meta", "app-s", "vt", 20)
    assert meta.media_hosts == ("media.example.com",)
    assert (whapi.webhook_secret, whapi.app_secret, whapi.paused) == ("wh-s", None, False)
    assert [c.id for c in registry.channels()] == [meta.id, whapi.id]
    assert registry.channels("beta") == [whapi]
    # The same id at another provider is another channel; at the same provider it is refused.
    registry.add_channel(tenant="beta", provider=Provider.CHAKRA, key="1065", token="t")
    with pytest.raises(RegistryError, match="already exists"):
        registry.add_channel(tenant="beta", provider=Provider.META, key="1065", token="t")
    with pytest.raises(RegistryError, match="unknown tenant"):
        registry.add_channel(tenant="nobody", provider=Provider.META, key="9", token="t")
    with pytest.raises(RegistryError, match="unknown channel id"):
        registry.channel_by_id(10_000)
    with pytest.raises(RegistryError, match="unknown meta channel"):
        registry.channel_by_key(Provider.META, "CH-1")


def test_a_new_token_unpauses_the_channel_and_says_whether_it_was_paused(
        registry: Registry) -> None:
    registry.add_tenant("acme")
    channel = registry.add_channel(tenant="acme", provider=Provider.META, key="1065",
                                   token="old")
    version = registry.version()
    registry.set_channel_pause(channel.id, True, "provider error 190: token expired")
    paused = registry.channel_by_id(channel.id)
    assert (paused.paused, paused.pause_reason) == (True, "provider error 190: token expired")
    assert registry.set_channel_token(channel.id, "new") is True
    fixed = registry.channel_by_id(channel.id)
    assert (fixed.paused, fixed.pause_reason, fixed.token) == (False, None, "new")
    assert registry.set_channel_token(channel.id, "newer") is False
    assert registry.version() == version + 3  # processes reload their snapshot each time
    with pytest.raises(RegistryError):
        registry.set_channel_token(channel.id, "")
    with pytest.raises(RegistryError, match="unknown channel id"):
        registry.set_channel_token(10_000, "x")


def test_last_inbound_only_moves_forward_and_does_not_bump_the_version(
        registry: Registry) -> None:
    registry.add_tenant("acme")
    one = registry.add_channel(tenant="acme", provider=Provider.META, key="1", token="t")
    two = registry.add_channel(tenant="acme", provider=Provider.META, key="2", token="t")
    version = registry.version()
    now = utcnow().replace(microsecond=0)
    registry.touch_inbound([one.id], now)
    registry.touch_inbound([one.id], now - timedelta(minutes=5))  # an older batch, late
    registry.touch_inbound([], now)
    seen = registry.last_inbound()
    assert seen[two.id] is None
    first = seen[one.id]
    assert first is not None and abs((first.replace(tzinfo=None) - now.replace(tzinfo=None)
                                      ).total_seconds()) < 1
    assert registry.version() == version


def test_parked_items_park_list_replay_and_delete(registry: Registry) -> None:
    first = registry.park(stage="receive", reason="cannot parse: " + "x" * 2000,
                          payload="{bad", provider="whapi", channel_key="CH")
    second = registry.park(stage="write", reason="no tenant for meta channel '9'",
                           payload="[]", provider="meta", channel_key="9",
                           raw_body='{"entry": []}', signature="sha256=" + "a" * 64)
    third = registry.park(stage="write", reason="r", payload="[]", signature="s" * 300)
    item = registry.parked_item(first)
    assert (item.stage, item.provider, item.channel_key, item.payload) == (
        "receive", "whapi", "CH", "{bad")
    assert len(item.reason) == 1000 and item.replay_count == 0 and item.replayed_at is None
    signed = registry.parked_item(second)
    assert (signed.raw_body, signed.signature) == ('{"entry": []}', "sha256=" + "a" * 64)
    assert signed.summary()["signed_body"] is True
    assert registry.parked_item(third).signature is None  # too long to ever verify
    assert [i.id for i in registry.parked_items()] == [first, second, third]
    assert [i.id for i in registry.parked_items(limit=2)] == [first, second]

    registry.mark_replayed(second)
    registry.mark_replayed(second)
    assert [i.id for i in registry.parked_items()] == [first, third]
    replayed = registry.parked_item(second)
    assert replayed.replay_count == 2 and replayed.replayed_at is not None
    assert [i.id for i in registry.parked_items(include_replayed=True)] == [first, second,
                                                                            third]

    assert registry.delete_parked([first, 10_000]) == [first]
    assert registry.delete_parked([]) == []
    with pytest.raises(RegistryError, match="no parked item"):
        registry.parked_item(first)
