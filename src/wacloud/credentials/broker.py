"""The credentials broker: provider ids -> tenant, channel, decrypted secrets, tenant DB.

Every stage gets credentials only through here. It serves lookups from an in-memory snapshot
of the registry that is rebuilt when the registry's change counter moves (polled every
`registry_poll_s`) and at the latest every `credentials_cache_s`, so a CLI change reaches a
running gateway within seconds and a stale entry can never live long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.errors import TroubleLog
from wacloud.adapters.db.registry.api_keys import ApiKey, active_key_hashes, hash_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.domain.model import Channel, Provider
from wacloud.security.crypto import SecretBox

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Snapshot:
    version: int = -1
    loaded_at: float = 0.0
    by_key: dict[tuple[Provider, str], Channel] = field(default_factory=dict)
    by_waba: dict[str, list[Channel]] = field(default_factory=dict)
    tenant_urls: dict[str, str | None] = field(default_factory=dict)
    meta_app_secrets: list[str] = field(default_factory=list)
    # Set when every Meta channel (and the global setting) uses one app secret: the usual
    # single-app deployment, where a signature can be checked without parsing the payload.
    uniform_meta_secret: str | None = None
    by_tenant: dict[str, dict[str, Channel]] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)


class CredentialsBroker:
    def __init__(self, registry: Registry, *, tenants_dir: Path, cache_seconds: float = 30.0,
                 global_meta_app_secret: str | None = None,
                 key_loader: Callable[[], SecretBox] | None = None,
                 sqlite_busy_timeout_s: float = 30.0) -> None:
        self.registry = registry
        # How long a write to a tenant's SQLite file waits for a lock another process holds.
        self.sqlite_busy_timeout_s = sqlite_busy_timeout_s
        self.tenants_dir = tenants_dir
        self.cache_seconds = cache_seconds
        self.global_meta_app_secret = global_meta_app_secret
        self._key_loader = key_loader
        self._snapshot = Snapshot()
        self._stores: dict[str, tuple[str | None, TenantStore]] = {}
        self._lock = threading.Lock()
        self._last_miss_refresh = 0.0

    # -- snapshot --------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the snapshot if the registry changed or the cache aged out."""
        version = self.registry.version()
        snap = self._snapshot
        if (not force and version == snap.version
                and time.monotonic() - snap.loaded_at < self.cache_seconds):
            return False
        if self._key_loader is not None:
            # Keys may have been rotated by `wacloud keys rotate` in another process.
            self.registry.secrets = self._key_loader()
        new = Snapshot(version=version, loaded_at=time.monotonic())
        for tenant in self.registry.tenants():
            new.tenant_urls[tenant.slug] = tenant.db_url
            new.by_tenant[tenant.slug] = {}
        new.api_keys = active_key_hashes(self.registry)
        secrets: list[str] = []
        for channel in self.registry.channels():
            new.by_key[(channel.provider, channel.key)] = channel
            new.by_tenant.setdefault(channel.tenant, {})[channel.key] = channel
            if channel.waba_id:
                new.by_waba.setdefault(channel.waba_id, []).append(channel)
            if (channel.provider is Provider.META and channel.app_secret
                    and channel.app_secret not in secrets):
                secrets.append(channel.app_secret)
        new.meta_app_secrets = secrets
        every_secret = {c.app_secret for c in new.by_key.values() if c.provider is Provider.META}
        if self.global_meta_app_secret:
            every_secret.add(self.global_meta_app_secret)
        if len(every_secret) == 1 and None not in every_secret and "" not in every_secret:
            new.uniform_meta_secret = every_secret.pop()
        self._snapshot = new
        return True

    def ensure_fresh(self) -> None:
        if self._snapshot.version < 0:
            self.refresh(force=True)

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Poll the registry's change counter until `stop` is set."""
        trouble = TroubleLog(log)
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a registry hiccup must not stop routing from the snapshot
                trouble.failed("the registry", "credentials refresh", exc)
            else:
                trouble.succeeded("the registry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # -- lookups ---------------------------------------------------------------------------

    def channel(self, provider: Provider, key: str, account_key: str | None = None
                ) -> Channel | None:
        """The channel a provider id routes to; Meta falls back to the WABA id."""
        self.ensure_fresh()
        snap = self._snapshot
        found = snap.by_key.get((provider, key))
        if found is None and account_key and provider is Provider.META:
            candidates = [c for c in snap.by_waba.get(account_key, [])
                          if c.provider is Provider.META]
            if len(candidates) == 1:
                found = candidates[0]
        return found

    def meta_secrets_for(self, phone_number_ids: set[str], waba_ids: set[str]) -> list[str]:
        """App secrets that may sign a Meta payload naming these ids: the named channels'
        secrets if any is known, else every configured secret (the payload is then parked)."""
        self.ensure_fresh()
        snap = self._snapshot
        named: list[str] = []
        for pnid in phone_number_ids:
            channel = snap.by_key.get((Provider.META, pnid))
            if channel and channel.app_secret and channel.app_secret not in named:
                named.append(channel.app_secret)
        for waba in waba_ids:
            for channel in snap.by_waba.get(waba, []):
                if channel.app_secret and channel.app_secret not in named:
                    named.append(channel.app_secret)
        pool = named if named or self._names_known(phone_number_ids, waba_ids) else list(
            snap.meta_app_secrets)
        if self.global_meta_app_secret:
            pool = [*pool, self.global_meta_app_secret]
        return pool

    def uniform_meta_secret(self) -> str | None:
        """The one app secret every Meta payload must be signed with, if there is just one."""
        self.ensure_fresh()
        return self._snapshot.uniform_meta_secret

    def _names_known(self, phone_number_ids: set[str], waba_ids: set[str]) -> bool:
        snap = self._snapshot
        return any((Provider.META, p) in snap.by_key for p in phone_number_ids) or any(
            w in snap.by_waba for w in waba_ids)

    def meta_verify_tokens(self) -> list[str]:
        self.ensure_fresh()
        return [c.verify_token for c in self._snapshot.by_key.values()
                if c.provider is Provider.META and c.verify_token]

    def tenant_channel(self, tenant: str, key: str) -> Channel | None:
        """A tenant's own channel by its provider id: a tenant can only send through its own."""
        self.ensure_fresh()
        return self._snapshot.by_tenant.get(tenant, {}).get(key)

    def tenant_slugs(self) -> list[str]:
        self.ensure_fresh()
        return list(self._snapshot.tenant_urls)

    def channels(self) -> list[Channel]:
        """Every channel of the current snapshot (for the metrics' paused-channel gauge)."""
        self.ensure_fresh()
        return [c for channels in self._snapshot.by_tenant.values() for c in channels.values()]

    def paused_channel_keys(self, tenant: str) -> set[str]:
        self.ensure_fresh()
        return {k for k, c in self._snapshot.by_tenant.get(tenant, {}).items() if c.paused}

    def pause_channel(self, channel: Channel, reason: str) -> None:
        """Pause a channel (token or account problem) so its messages wait, visibly."""
        self.registry.set_channel_pause(channel.id, True, reason)
        channel.paused, channel.pause_reason = True, reason  # this process sees it at once

    def api_key(self, key: str) -> ApiKey | None:
        self.ensure_fresh()
        return self._snapshot.api_keys.get(hash_key(key))

    def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The active key with this hash (a dashboard session keeps the hash, never the key)."""
        self.ensure_fresh()
        return self._snapshot.api_keys.get(key_hash)

    def refresh_after_miss(self, min_interval: float = 1.0) -> bool:
        """An unknown key or channel may be a minute old: look again, at most once per
        `min_interval` so a flood of bad keys cannot hammer the registry."""
        now = time.monotonic()
        if now - self._last_miss_refresh < min_interval:
            return False
        self._last_miss_refresh = now
        return self.refresh()

    def has_tenant(self, slug: str) -> bool:
        self.ensure_fresh()
        return slug in self._snapshot.tenant_urls

    # -- tenant databases ------------------------------------------------------------------

    async def tenant_store_async(self, slug: str) -> TenantStore:
        """`tenant_store` for stages: the cached store at once, a thread only to open one."""
        snap = self._snapshot
        cached = self._stores.get(slug)
        if cached is not None and slug in snap.tenant_urls and cached[0] == snap.tenant_urls[slug]:
            return cached[1]
        return await asyncio.to_thread(self.tenant_store, slug)

    def tenant_store(self, slug: str) -> TenantStore:
        """The tenant's DB, from the registry only (never from a payload)."""
        self.ensure_fresh()
        if slug not in self._snapshot.tenant_urls:
            self.refresh()  # a tenant added a moment ago; cheap when nothing changed
        if slug not in self._snapshot.tenant_urls:
            raise KeyError(f"unknown tenant {slug!r}")
        url = self._snapshot.tenant_urls[slug]
        with self._lock:
            cached = self._stores.get(slug)
            if cached is not None and cached[0] == url:
                return cached[1]
            engine_url = url or f"sqlite:///{(self.tenants_dir / f'{slug}.db').resolve()}"
            self.tenants_dir.mkdir(parents=True, exist_ok=True)
            store = TenantStore(slug, create_engine(
                engine_url, sqlite_busy_timeout_s=self.sqlite_busy_timeout_s))
            store.create_schema()
            if cached is not None:
                cached[1].close()
            self._stores[slug] = (url, store)
            return store

    def close(self) -> None:
        with self._lock:
            for _, store in self._stores.values():
                store.close()
            self._stores.clear()
