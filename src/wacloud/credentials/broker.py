"""The credentials broker: provider ids -> tenant, channel, decrypted secrets, tenant DB.

Every stage gets credentials only through here. It serves lookups from an in-memory snapshot
of the registry that is rebuilt when the registry's change counter moves (polled every
`registry_poll_s`) and at the latest every `credentials_cache_s`, so a CLI change reaches a
running gateway within seconds and a stale entry can never live long.

Tenant databases are opened on first use and kept open, within bounds, so that 1,000 tenants
on one database server do not hold thousands of connections: each tenant's engine pools at
most `tenant_pool_size` connections, at most `tenant_engines_max` engines are open at once (a
new one closes the least recently used idle one), and an engine unused for `tenant_idle_close_s`
is closed (`close_idle`, run by `watch`). A closed tenant is opened again when next needed,
without migrating again.
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

from sqlalchemy.pool import QueuePool

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.errors import TroubleLog
from wacloud.adapters.db.registry.api_keys import ApiKey, active_key_hashes, hash_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.domain.model import Channel, Provider
from wacloud.providers import PROVIDERS, port
from wacloud.providers.base import WebhookAuth
from wacloud.security.crypto import SecretBox

log = logging.getLogger(__name__)
# Alembic keeps the running migration in module globals (`alembic.op`, `alembic.context`):
# two migrations in one process at once would mix up their databases.
_MIGRATIONS = threading.Lock()

# Providers whose webhooks are signed with an app secret (Meta): their channels' app secrets
# are kept apart, per provider, to check signatures with.
SIGNED_BODY = tuple(provider for provider, found in PROVIDERS.items()
                    if found.webhook_auth is WebhookAuth.SIGNED_BODY)


@dataclass(slots=True)
class Snapshot:
    version: int = -1
    loaded_at: float = 0.0
    by_key: dict[tuple[Provider, str], Channel] = field(default_factory=dict)
    by_waba: dict[str, list[Channel]] = field(default_factory=dict)
    tenant_urls: dict[str, str | None] = field(default_factory=dict)
    # Per signed-body provider (Meta): every app secret its channels have.
    app_secrets: dict[Provider, list[str]] = field(default_factory=dict)
    # A signed-body provider is here when every one of its channels (and the global setting)
    # uses one app secret: the usual single-app deployment, where a signature can be checked
    # without parsing the payload.
    uniform_app_secret: dict[Provider, str] = field(default_factory=dict)
    by_tenant: dict[str, dict[str, Channel]] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)


@dataclass(slots=True)
class _OpenStore:
    url: str | None  # the registry's URL for the tenant (None: its SQLite file)
    store: TenantStore
    last_used: float


def _busy(store: TenantStore) -> bool:
    """A connection of the store's pool is in use (closing it now would not free that one)."""
    pool = store.engine.pool
    return isinstance(pool, QueuePool) and pool.checkedout() > 0


class CredentialsBroker:
    def __init__(self, registry: Registry, *, tenants_dir: Path, cache_seconds: float = 30.0,
                 global_meta_app_secret: str | None = None,
                 key_loader: Callable[[], SecretBox] | None = None,
                 sqlite_busy_timeout_s: float = 30.0, tenant_pool_size: int = 4,
                 tenant_engines_max: int = 64, tenant_idle_close_s: float = 300.0) -> None:
        self.registry = registry
        # How long a write to a tenant's SQLite file waits for a lock another process holds.
        self.sqlite_busy_timeout_s = sqlite_busy_timeout_s
        self.tenants_dir = tenants_dir
        self.cache_seconds = cache_seconds
        self.global_meta_app_secret = global_meta_app_secret
        self._key_loader = key_loader
        self._snapshot = Snapshot()
        self.tenant_pool_size = tenant_pool_size
        self.tenant_engines_max = max(tenant_engines_max, 1)
        self.tenant_idle_close_s = tenant_idle_close_s
        self._stores: dict[str, _OpenStore] = {}
        # (slug, engine URL) brought to the schema's head by this process: reopening a closed
        # tenant does not run the migrations' checks again.
        self._migrated: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # guards `_stores`, held only briefly
        self._opening: dict[str, threading.Lock] = {}  # one per tenant being opened
        self._last_miss_refresh = 0.0
        # One rebuild at a time: two at once (the watcher's and a stage's after a miss) could
        # finish in the wrong order, the one that read the registry first replacing the newer
        # snapshot, and a channel added a moment ago vanished again (its rows failed).
        self._refresh_lock = threading.Lock()

    # -- snapshot --------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the snapshot if the registry changed or the cache aged out."""
        with self._refresh_lock:
            return self._refresh(force)

    def _refresh(self, force: bool) -> bool:
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
        new.app_secrets = {provider: [] for provider in SIGNED_BODY}
        for channel in self.registry.channels():
            new.by_key[(channel.provider, channel.key)] = channel
            new.by_tenant.setdefault(channel.tenant, {})[channel.key] = channel
            if channel.waba_id:
                new.by_waba.setdefault(channel.waba_id, []).append(channel)
            secrets = new.app_secrets.get(channel.provider)
            if secrets is not None and channel.app_secret and channel.app_secret not in secrets:
                secrets.append(channel.app_secret)
        for provider in SIGNED_BODY:
            every_secret = {c.app_secret for c in new.by_key.values() if c.provider is provider}
            if self.global_meta_app_secret:
                every_secret.add(self.global_meta_app_secret)
            if len(every_secret) == 1 and None not in every_secret and "" not in every_secret:
                new.uniform_app_secret[provider] = str(every_secret.pop())
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
            try:
                await asyncio.to_thread(self.close_idle)
            except Exception:  # closing is best effort; the next round tries again
                log.exception("closing idle tenant databases failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # -- lookups ---------------------------------------------------------------------------

    def channel(self, provider: Provider, key: str, account_key: str | None = None
                ) -> Channel | None:
        """The channel a provider id routes to; a provider that `routes_by_account` (Meta)
        falls back to the account id (the WABA id) when it has a single channel."""
        self.ensure_fresh()
        snap = self._snapshot
        found = snap.by_key.get((provider, key))
        if found is None and account_key and port(provider).routes_by_account:
            candidates = [c for c in snap.by_waba.get(account_key, [])
                          if c.provider is provider]
            if len(candidates) == 1:
                found = candidates[0]
        return found

    def app_secrets_for(self, provider: Provider, channel_keys: set[str],
                        account_keys: set[str]) -> list[str]:
        """App secrets that may sign a signed-body provider's payload naming these channel
        keys (Meta: phone number ids) and account ids (WABA ids): the named channels' secrets
        if any is known, else every configured secret (the payload is then parked); the
        global one (`WACLOUD_META_APP_SECRET`) last."""
        self.ensure_fresh()
        snap = self._snapshot
        named: list[str] = []
        for key in channel_keys:
            channel = snap.by_key.get((provider, key))
            if channel and channel.app_secret and channel.app_secret not in named:
                named.append(channel.app_secret)
        for account in account_keys:
            for channel in snap.by_waba.get(account, []):
                if (channel.provider is provider and channel.app_secret
                        and channel.app_secret not in named):
                    named.append(channel.app_secret)
        pool = named if named or self._names_known(provider, channel_keys, account_keys) else (
            list(snap.app_secrets.get(provider, ())))
        if self.global_meta_app_secret:
            pool = [*pool, self.global_meta_app_secret]
        return pool

    def uniform_app_secret(self, provider: Provider) -> str | None:
        """The one app secret every payload of a signed-body provider must be signed with, if
        there is just one."""
        self.ensure_fresh()
        return self._snapshot.uniform_app_secret.get(provider)

    def _names_known(self, provider: Provider, channel_keys: set[str],
                     account_keys: set[str]) -> bool:
        snap = self._snapshot
        return any((provider, k) in snap.by_key for k in channel_keys) or any(
            a in snap.by_waba for a in account_keys)

    def verify_tokens(self, provider: Provider) -> list[str]:
        """The verify tokens of a signed-body provider's channels (its GET handshake)."""
        self.ensure_fresh()
        return [c.verify_token for c in self._snapshot.by_key.values()
                if c.provider is provider and c.verify_token]

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
        if (cached is not None and slug in snap.tenant_urls
                and cached.url == snap.tenant_urls[slug] and not cached.store.closed):
            cached.last_used = time.monotonic()
            return cached.store
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
            if cached is not None and cached.url == url and not cached.store.closed:
                cached.last_used = time.monotonic()
                return cached.store
            opening = self._opening.setdefault(slug, threading.Lock())
        # Opening (a connection, maybe the migrations) holds only this tenant's lock: a
        # database that hangs must not hold up the other tenants' look-ups.
        with opening:
            with self._lock:
                cached = self._stores.get(slug)
                if cached is not None and cached.url == url and not cached.store.closed:
                    cached.last_used = time.monotonic()
                    return cached.store
            store = self._open(slug, url)
            with self._lock:
                replaced = self._stores.get(slug)
                self._stores[slug] = _OpenStore(url, store, time.monotonic())
                self._evict_over_cap(keep=slug)
            if replaced is not None and replaced.store is not store:
                replaced.store.close()
            return store

    def _open(self, slug: str, url: str | None) -> TenantStore:
        engine_url = url or f"sqlite:///{(self.tenants_dir / f'{slug}.db').resolve()}"
        self.tenants_dir.mkdir(parents=True, exist_ok=True)
        store = TenantStore(slug, create_engine(
            engine_url, sqlite_busy_timeout_s=self.sqlite_busy_timeout_s,
            pool_size=self.tenant_pool_size, max_overflow=0))
        if (slug, engine_url) not in self._migrated:
            try:
                # Connect first, outside the lock below: a database that hangs holds up
                # only its own tenant.
                with store.engine.connect():
                    pass
                with _MIGRATIONS:
                    store.create_schema()
            except BaseException:
                store.close()
                raise
            self._migrated.add((slug, engine_url))
        return store

    def _evict_over_cap(self, keep: str) -> None:
        """Close least recently used stores until at most `tenant_engines_max` are open. A
        store with a connection in use is passed over (the cap is exceeded until it is idle:
        closing it would not free that connection). Called with `_lock` held."""
        excess = len(self._stores) - self.tenant_engines_max
        if excess <= 0:
            return
        by_age = sorted((entry.last_used, slug) for slug, entry in self._stores.items()
                        if slug != keep)
        for _, slug in by_age:
            if excess <= 0:
                break
            entry = self._stores[slug]
            if _busy(entry.store):
                continue
            del self._stores[slug]
            entry.store.close()
            excess -= 1

    def close_idle(self, now: float | None = None) -> int:
        """Close the stores unused for `tenant_idle_close_s`; returns how many."""
        now = time.monotonic() if now is None else now
        closed = 0
        with self._lock:
            for slug, entry in list(self._stores.items()):
                if now - entry.last_used >= self.tenant_idle_close_s and not _busy(entry.store):
                    del self._stores[slug]
                    entry.store.close()
                    closed += 1
        if closed:
            log.debug("closed %d idle tenant databases", closed)
        return closed

    def open_tenant_count(self) -> int:
        """How many tenant databases this broker holds open."""
        return len(self._stores)

    def close(self) -> None:
        with self._lock:
            for entry in self._stores.values():
                entry.store.close()
            self._stores.clear()
