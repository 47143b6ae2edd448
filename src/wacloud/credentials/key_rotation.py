"""Encryption key rotation without downtime.

`rotate` puts a new key in front of the key file, then re-encrypts every stored secret under it
in one registry transaction that bumps the registry version, so running gateways reload both
the key ring and the secrets within a poll interval. The old keys keep decrypting until
`prune` (or `rotate --drop-old`) removes them, which it does only after checking, under the
registry's write lock, that the newest key alone opens every stored secret.

The file is written before any secret changes: a process that reloads in between still has a
ring that opens everything. A process whose reload races the change fails that reload, keeps
its previous snapshot and retries at its next poll.

Keys given in `WACLOUD_ENCRYPTION_KEY` cannot be changed from here: `rotate` and `prune` then
explain the steps instead (`reencrypt` and `status` work with either source).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.rekey import KeyCensus, census, reencrypt_all
from wacloud.adapters.db.registry.store import Registry
from wacloud.security.crypto import (
    SecretBox,
    load_secret_box,
    new_key,
    read_key_file,
    write_key_file,
)
from wacloud.settings import Settings

ENV_ROTATION_HELP = (
    "the encryption keys come from WACLOUD_ENCRYPTION_KEY, which wacloud cannot change. "
    "To rotate: (1) make a key with `wacloud keys generate`; (2) set "
    "WACLOUD_ENCRYPTION_KEY=NEW,OLD (comma separated, newest first) for every wacloud process "
    "and restart them; (3) run `wacloud keys reencrypt`; (4) when `wacloud keys status` shows "
    "nothing under older keys, set WACLOUD_ENCRYPTION_KEY=NEW and restart again. "
    "(Or unset it to use the key file, where `wacloud keys rotate` does all of this.)")


class KeyRotationError(RuntimeError):
    """Rotation cannot proceed; the message says why and what to do. Never carries a key."""


@dataclass(slots=True)
class RotationReport:
    keys_before: int
    keys_after: int
    reencrypted: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"keys_before": self.keys_before, "keys_after": self.keys_after,
                "reencrypted": self.reencrypted, "reencrypted_total": sum(
                    self.reencrypted.values()), "dropped_keys": self.dropped}


def key_source(settings: Settings) -> str:
    return "environment" if settings.encryption_key else "file"


@contextlib.contextmanager
def key_lock(settings: Settings) -> Iterator[None]:
    """One key change at a time per data dir."""
    settings.key_file.parent.mkdir(parents=True, exist_ok=True)
    with open(settings.key_file.with_suffix(".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _registry(settings: Settings, box: SecretBox) -> Iterator[Registry]:
    registry = Registry(create_engine(settings.registry), box)
    try:
        yield registry
    finally:
        registry.engine.dispose()


def _file_keys(settings: Settings) -> list[str]:
    if settings.encryption_key:
        raise KeyRotationError(ENV_ROTATION_HELP)
    keys = read_key_file(settings.key_file)
    if not keys:
        raise KeyRotationError(f"no key file at {settings.key_file} (run `wacloud init`)")
    return keys


def _require_readable(found: KeyCensus) -> None:
    bad = {name: n for name, n in found.undecryptable.items() if n}
    if bad:
        raise KeyRotationError(
            f"some stored secrets cannot be decrypted with the configured keys ({bad}); "
            "nothing was changed")


def rotate(settings: Settings, *, drop_old: bool = False) -> RotationReport:
    with key_lock(settings):
        keys = _file_keys(settings)
        with _registry(settings, SecretBox(keys)) as registry:
            _require_readable(census(registry))
            ring = [new_key(), *keys]
            write_key_file(settings.key_file, ring)
            registry.secrets = SecretBox(ring)
            report = RotationReport(len(keys), len(ring), reencrypt_all(registry))
            if drop_old:
                report.dropped = _prune_locked(settings, registry, ring)
                report.keys_after = 1
        return report


def prune(settings: Settings) -> RotationReport:
    """Drop every key but the newest, after re-encrypting anything still under an older one."""
    if settings.encryption_key:
        with _registry(settings, load_secret_box(settings.encryption_key,
                                                 settings.key_file)) as registry:
            older = census(registry).totals["under_older"]
        hint = ("every stored secret is under the newest key: you can remove the older keys "
                "from WACLOUD_ENCRYPTION_KEY" if older == 0 else
                f"{older} stored secret(s) still need an older key: run `wacloud keys "
                "reencrypt` first")
        raise KeyRotationError(f"the keys come from WACLOUD_ENCRYPTION_KEY; {hint}")
    with key_lock(settings):
        keys = _file_keys(settings)
        with _registry(settings, SecretBox(keys)) as registry:
            if len(keys) == 1:
                return RotationReport(1, 1)
            report = RotationReport(len(keys), 1, reencrypt_all(registry))
            report.dropped = _prune_locked(settings, registry, keys)
            return report


def _prune_locked(settings: Settings, registry: Registry, keys: list[str]) -> int:
    """Under the registry's write lock (the version bump), check that the newest key alone
    opens everything, then rewrite the key file. If the check fails nothing is dropped."""
    with registry.engine.begin() as conn:
        Registry.bump(conn)
        found = census(registry, conn)
        waiting = found.totals["under_older"] + found.totals["undecryptable"]
        if waiting:
            raise KeyRotationError(
                f"{waiting} stored secret(s) are not under the newest key (changed by another "
                "process meanwhile?); no key was dropped: run `wacloud keys prune` again")
        write_key_file(settings.key_file, keys[:1])
    return len(keys) - 1


def reencrypt(settings: Settings) -> dict[str, int]:
    """Re-encrypt everything under the newest configured key (file or environment)."""
    box = load_secret_box(settings.encryption_key, settings.key_file)
    with key_lock(settings), _registry(settings, box) as registry:
        _require_readable(census(registry))
        return reencrypt_all(registry)


def status(settings: Settings) -> dict[str, Any]:
    box = load_secret_box(settings.encryption_key, settings.key_file)
    with _registry(settings, box) as registry:
        found = census(registry)
    return {"source": key_source(settings), "keys": box.key_count, **found.totals,
            "by_column": {name: {"under_newest": found.under_newest[name],
                                 "under_older": found.under_older[name],
                                 "undecryptable": found.undecryptable[name]}
                          for name in found.under_newest}}
