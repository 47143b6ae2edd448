"""The composition root: its seams take ready adapters, its stage specs say what each stage
consumes and produces, and `open_credentials` builds the broker from the settings."""

from __future__ import annotations

from pathlib import Path

from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.bootstrap import build_gateway, init_data_dir, open_credentials, queue_specs
from wacloud.hosting.runners import stage_runners
from wacloud.settings import Settings
from wacloud.stages import envelopes
from wacloud.testing.memory_media import MemoryMediaStore
from wacloud.testing.memory_queue import MemoryQueueBroker, MemoryQueues


class ClosedMemoryMediaStore(MemoryMediaStore):
    """Remembers being closed: the gateway owns the store it was given."""

    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_the_seams_take_the_adapters_given_and_close_them_with_the_gateway(
        tmp_path: Path) -> None:
    place = MemoryQueues()
    media = ClosedMemoryMediaStore()
    client = ProviderClient()
    gateway = build_gateway(Settings(data_dir=tmp_path), queue_broker=MemoryQueueBroker(place),
                            media_store=media, provider_client=client)
    try:
        assert gateway.media_store is media and gateway.copier.store is media
        assert gateway.send_http is client
        await gateway.queues[envelopes.INBOUND_RAW].send(b"x")
        assert place.messages[envelopes.INBOUND_RAW]  # on the broker given, not a file
        assert not (tmp_path / "queues.db").exists()
    finally:
        await gateway.close()
    assert media.closed


async def test_without_seams_the_settings_choose_the_embedded_adapters(tmp_path: Path) -> None:
    gateway = build_gateway(Settings(data_dir=tmp_path))
    assert isinstance(gateway.queue_broker, SqliteBroker)
    assert isinstance(gateway.media_store, LocalMediaStore)
    assert gateway.media_store.root == (tmp_path / "media").resolve()
    await gateway.close()
    assert gateway.queue_broker.closed


async def test_every_stage_consumes_and_produces_declared_queues_and_none_polls_events(
        tmp_path: Path) -> None:
    gateway = build_gateway(Settings(data_dir=tmp_path), queue_broker=MemoryQueueBroker(),
                            media_store=MemoryMediaStore())
    try:
        specs = {spec.name: spec for spec in gateway.stages()}
        assert set(specs) == {"inbound", "media", "send", "save"}
        declared = set(queue_specs(gateway.settings))
        for spec in specs.values():
            assert {spec.consumes, *spec.produces} <= declared
        assert specs["inbound"].consumes == envelopes.INBOUND_RAW
        assert specs["inbound"].produces == (envelopes.INBOUND_MEDIA,)
        assert specs["send"].produces == (envelopes.OUTBOUND_RESULTS,)
        # Nothing produces to `inbound.events`, so nothing polls it.
        assert envelopes.INBOUND_EVENTS not in {s.consumes for s in specs.values()}
        assert all(envelopes.INBOUND_EVENTS not in s.produces for s in specs.values())
        runners = stage_runners(gateway, ("inbound", "save"))
        assert [(r.name, r.queue.spec.name) for r in runners] == [
            ("save", envelopes.OUTBOUND_RESULTS), ("inbound", envelopes.INBOUND_RAW)]
        assert runners[1].batch_handler is not None and runners[1].batch == 150
    finally:
        await gateway.close()


def test_open_credentials_builds_the_broker_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, credentials_cache_s=7.0, sqlite_busy_timeout_s=3.0,
                        meta_app_secret="global-app-secret")
    init_data_dir(settings)
    broker = open_credentials(settings)
    try:
        assert (broker.cache_seconds, broker.sqlite_busy_timeout_s,
                broker.global_meta_app_secret) == (7.0, 3.0, "global-app-secret")
        assert broker.tenants_dir == settings.tenants_dir
        broker.registry.add_tenant("acme")
        assert broker.refresh(force=True) and broker.has_tenant("acme")
    finally:
        broker.close()
        broker.registry.engine.dispose()
