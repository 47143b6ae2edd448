"""Re-encrypting the registry's secrets under the newest key, and checking which key each one
needs. Every `*_encrypted` column of the registry schema is covered, so a new one is too.

Counts are keyed `table.column` without the `_encrypted` suffix (e.g. `channels.token`).
Nothing here ever returns or raises with a plaintext or a ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wacloud.adapters.db.registry.store import Registry, encrypted_columns
from wacloud.security.crypto import SecretBox, SecretError


def label(column: sa.Column[Any]) -> str:
    return f"{column.table.name}.{column.name.removesuffix('_encrypted')}"


@dataclass(slots=True)
class KeyCensus:
    """How many stored secrets each key state covers."""

    under_newest: dict[str, int] = field(default_factory=dict)
    under_older: dict[str, int] = field(default_factory=dict)
    undecryptable: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        return {"under_newest": sum(self.under_newest.values()),
                "under_older": sum(self.under_older.values()),
                "undecryptable": sum(self.undecryptable.values())}


def _rows(conn: Connection, column: sa.Column[Any]) -> list[Any]:
    table = column.table
    pk = list(table.primary_key.columns)
    return list(conn.execute(sa.select(*pk, column).where(column.is_not(None))).all())


def census(registry: Registry, conn: Connection | None = None) -> KeyCensus:
    """Which stored secrets the newest key alone decrypts, which need an older one, and which
    none of the configured keys can open."""
    if conn is None:
        with registry.engine.connect() as own:
            return census(registry, own)
    ring, newest = registry.secrets, registry.secrets.newest_only()
    result = KeyCensus()
    for column in encrypted_columns():
        name = label(column)
        counts = {"new": 0, "old": 0, "bad": 0}
        for row in _rows(conn, column):
            ciphertext = row[-1]
            state = "new" if newest.decrypts(ciphertext) else (
                "old" if ring.decrypts(ciphertext) else "bad")
            counts[state] += 1
        result.under_newest[name] = counts["new"]
        result.under_older[name] = counts["old"]
        result.undecryptable[name] = counts["bad"]
    return result


def reencrypt_all(registry: Registry) -> dict[str, int]:
    """Re-encrypt every stored secret under the newest key in one transaction that also bumps
    the registry version (running gateways reload). The version bump comes first: it takes the
    registry's write lock, so no other change interleaves. Raises SecretError (and changes
    nothing) if any secret cannot be decrypted."""
    counts: dict[str, int] = {}
    box: SecretBox = registry.secrets
    with registry.engine.begin() as conn:
        Registry.bump(conn)
        for column in encrypted_columns():
            table = column.table
            pk = list(table.primary_key.columns)
            done = 0
            for row in _rows(conn, column):
                try:
                    fresh = box.rotate(row[-1])
                except SecretError:
                    raise SecretError(
                        f"a value in {label(column)} cannot be decrypted with the configured "
                        "keys; nothing was re-encrypted") from None
                where = [c == row[i] for i, c in enumerate(pk)]
                conn.execute(table.update().where(*where).values({column.name: fresh}))
                done += 1
            counts[label(column)] = done
    return counts
