"""The registry ("master") database: tenants, channels, API keys, parked payloads and the
audit of credential requests.

Secrets (tokens, app secrets, verify tokens, webhook secrets, tenant DB URLs) are encrypted
with the SecretBox before they reach a column and decrypted only when a Channel is built. Every
change bumps `registry_state.version`, which running processes poll to drop their caches.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from wacloud.adapters.db.migrate import upgrade
from wacloud.adapters.db.types import Id, LongText, UtcDateTime, key_string, utcnow
from wacloud.domain.model import Channel, Provider
from wacloud.security.crypto import SecretBox
from wacloud.security.urlpolicy import normalize_media_hosts

metadata = sa.MetaData()

registry_state = sa.Table(
    "registry_state", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

tenants = sa.Table(
    "tenants", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("db_url_encrypted", LongText, nullable=True),  # NULL: SQLite file in the data dir
    sa.Column("retention_days", sa.Integer, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

channels = sa.Table(
    "channels", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("provider", sa.String(16), nullable=False),
    # The routing id: Meta phone_number_id, Whapi channel_id, Chakra plugin id.
    sa.Column("key", key_string(), nullable=False),
    sa.Column("phone_number_id", key_string(64), nullable=True, index=True),
    sa.Column("waba_id", key_string(64), nullable=True, index=True),
    sa.Column("display_number", sa.String(32), nullable=True),
    sa.Column("api_base_url", sa.String(255), nullable=True),
    sa.Column("graph_version", sa.String(16), nullable=False),
    sa.Column("mps", sa.Integer, nullable=False),
    sa.Column("token_encrypted", LongText, nullable=False),
    sa.Column("app_secret_encrypted", LongText, nullable=True),
    sa.Column("verify_token_encrypted", LongText, nullable=True),
    sa.Column("webhook_secret_encrypted", LongText, nullable=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("pause_reason", sa.String(500), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Extra media hosts (SSRF allow list), comma separated; NULL: the provider's hosts only.
    sa.Column("media_hosts", sa.String(1000), nullable=True),
    # When an event of this channel's webhooks was last stored (channel health); written by
    # the write stage at most every few seconds per channel, never bumping the version.
    sa.Column("last_inbound_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("provider", "key", name="uq_channels_provider_key"),
)

# A signed webhook may be megabytes: MySQL/MariaDB's TEXT stops at 64 KB.
SignedBodyText = LongText().with_variant(mysql.LONGTEXT(), "mysql").with_variant(
    mysql.LONGTEXT(), "mariadb")

parked = sa.Table(
    "parked", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # Which stage parked it, so a replay sends it back to the right queue.
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(16), nullable=True),
    sa.Column("channel_key", key_string(), nullable=True),
    sa.Column("reason", sa.String(1000), nullable=False),
    sa.Column("payload", LongText, nullable=False),
    sa.Column("replayed_at", UtcDateTime, nullable=True),
    sa.Column("replay_count", sa.Integer, nullable=False, default=0),
    # The signed Meta webhook the parked events came from and its X-Hub-Signature-256, so a
    # replay checks them against the channel they then route to (NULL: nothing to check).
    sa.Column("raw_body", SignedBodyText, nullable=True),
    sa.Column("signature", sa.String(200), nullable=True),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.ForeignKey("tenants.id"), nullable=True, index=True),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    # A service key may only ask the credentials endpoint; it sees no tenant API.
    sa.Column("is_service", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    sa.Column("prefix", sa.String(16), nullable=False),  # shown in listings; not secret
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex
    sa.Column("label", sa.Unicode(191), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
)

# Who asked the credentials endpoint for which channel, when, and what came of it. Never the
# secret: only ids, the asking key's id/prefix/label and the outcome.
credential_audit = sa.Table(
    "credential_audit", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False, index=True),
    sa.Column("key_id", Id, nullable=True),  # NULL: no or unknown key
    sa.Column("key_prefix", sa.String(16), nullable=True),
    sa.Column("key_label", sa.Unicode(191), nullable=True),
    sa.Column("via", sa.String(16), nullable=False),  # http | lambda
    sa.Column("source", sa.String(64), nullable=True),  # client address, when known
    sa.Column("provider", sa.String(16), nullable=True),
    sa.Column("lookup_id", key_string(), nullable=True),  # the id asked for
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("channel_key", key_string(), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
)


def encrypted_columns() -> list[sa.Column[Any]]:
    """Every column holding a SecretBox ciphertext (named `*_encrypted`), for key rotation."""
    return [column for table in metadata.sorted_tables for column in table.columns
            if column.name.endswith("_encrypted")]


@dataclass(slots=True)
class Tenant:
    id: int
    slug: str
    db_url: str | None
    retention_days: int | None


@dataclass(slots=True)
class ParkedItem:
    id: int
    created_at: datetime
    stage: str
    provider: str | None
    channel_key: str | None
    reason: str
    payload: str
    replayed_at: datetime | None
    replay_count: int
    raw_body: str | None = None
    signature: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "created_at": self.created_at.isoformat(), "stage": self.stage,
            "provider": self.provider, "channel_key": self.channel_key, "reason": self.reason,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_count": self.replay_count, "size": len(self.payload),
            "signed_body": self.raw_body is not None,
        }


class RegistryError(ValueError):
    """A registry change that cannot be made (duplicate slug, unknown tenant, ...)."""


class Registry:
    def __init__(self, engine: Engine, secrets: SecretBox) -> None:
        self.engine = engine
        self.secrets = secrets

    def create_schema(self) -> None:
        upgrade(self.engine, "registry")
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
            # Another process starting at the same moment may insert it first.
            if conn.execute(sa.select(registry_state.c.id)).first() is None:
                conn.execute(registry_state.insert().values(id=1, version=1))

    # -- change tracking -------------------------------------------------------------------

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(registry_state.c.version)).scalar_one())

    @staticmethod
    def bump(conn: Connection) -> None:
        conn.execute(registry_state.update().values(version=registry_state.c.version + 1))

    # -- tenants ---------------------------------------------------------------------------

    def add_tenant(self, slug: str, db_url: str | None = None) -> Tenant:
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tenants.c.id).where(tenants.c.slug == slug)).first():
                raise RegistryError(f"tenant {slug!r} already exists")
            result = conn.execute(tenants.insert().values(
                slug=slug, db_url_encrypted=self.secrets.encrypt_optional(db_url),
                created_at=utcnow()))
            self.bump(conn)
            return Tenant(_new_id(result), slug, db_url, None)

    def tenants(self) -> list[Tenant]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tenants).order_by(tenants.c.slug)).mappings().all()
        return [self._tenant(row) for row in rows]

    def tenant(self, slug: str) -> Tenant:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.slug == slug)).mappings().first()
        if row is None:
            raise RegistryError(f"unknown tenant {slug!r}")
        return self._tenant(row)

    def _tenant(self, row: Any) -> Tenant:
        db_url = self.secrets.decrypt_optional(row["db_url_encrypted"])
        return Tenant(row["id"], row["slug"], db_url, row["retention_days"])

    # -- channels --------------------------------------------------------------------------

    def add_channel(self, *, tenant: str, provider: Provider, key: str, token: str,
                    phone_number_id: str | None = None, waba_id: str | None = None,
                    display_number: str | None = None, api_base_url: str | None = None,
                    graph_version: str = "v23.0", mps: int = 80, app_secret: str | None = None,
                    verify_token: str | None = None, webhook_secret: str | None = None,
                    media_hosts: Sequence[str] = ()) -> Channel:
        tenant_row = self.tenant(tenant)
        now = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(channels.c.id).where(
                channels.c.provider == provider.value, channels.c.key == key)).first()
            if exists:
                raise RegistryError(f"a {provider.value} channel with id {key!r} already exists")
            result = conn.execute(channels.insert().values(
                tenant_id=tenant_row.id, provider=provider.value, key=key,
                phone_number_id=phone_number_id, waba_id=waba_id, display_number=display_number,
                api_base_url=api_base_url, graph_version=graph_version, mps=mps,
                token_encrypted=self.secrets.encrypt(token),
                app_secret_encrypted=self.secrets.encrypt_optional(app_secret),
                verify_token_encrypted=self.secrets.encrypt_optional(verify_token),
                webhook_secret_encrypted=self.secrets.encrypt_optional(webhook_secret),
                paused=False, created_at=now, updated_at=now,
                media_hosts=",".join(normalize_media_hosts(media_hosts)) or None))
            self.bump(conn)
            channel_id = _new_id(result)
        return self.channel_by_id(channel_id)

    def _channel_query(self) -> sa.Select[Any]:
        return sa.select(channels, tenants.c.slug.label("tenant_slug")).join(
            tenants, tenants.c.id == channels.c.tenant_id)

    def channels(self, tenant: str | None = None) -> list[Channel]:
        query = self._channel_query().order_by(channels.c.id)
        if tenant is not None:
            query = query.where(tenants.c.slug == tenant)
        with self.engine.connect() as conn:
            return [self._channel(row) for row in conn.execute(query).mappings().all()]

    def channel_by_id(self, channel_id: int) -> Channel:
        with self.engine.connect() as conn:
            row = conn.execute(self._channel_query().where(channels.c.id == channel_id)
                               ).mappings().first()
        if row is None:
            raise RegistryError(f"unknown channel id {channel_id}")
        return self._channel(row)

    def channel_by_key(self, provider: Provider, key: str) -> Channel:
        with self.engine.connect() as conn:
            row = conn.execute(self._channel_query().where(
                channels.c.provider == provider.value, channels.c.key == key)).mappings().first()
        if row is None:
            raise RegistryError(f"unknown {provider.value} channel {key!r}")
        return self._channel(row)

    def set_channel_token(self, channel_id: int, token: str) -> bool:
        """Replace a channel's token and un-pause it (a paused channel usually waits for
        exactly this, e.g. after Meta error 190). Returns whether it was paused."""
        if not token:
            raise RegistryError("the token must not be empty")
        with self.engine.begin() as conn:
            paused = conn.execute(sa.select(channels.c.paused).where(
                channels.c.id == channel_id)).scalar_one_or_none()
            if paused is None:
                raise RegistryError(f"unknown channel id {channel_id}")
            conn.execute(channels.update().where(channels.c.id == channel_id).values(
                token_encrypted=self.secrets.encrypt(token), paused=False, pause_reason=None,
                updated_at=utcnow()))
            self.bump(conn)
        return bool(paused)

    def set_channel_pause(self, channel_id: int, paused: bool, reason: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(channels.update().where(channels.c.id == channel_id).values(
                paused=paused, pause_reason=reason, updated_at=utcnow()))
            self.bump(conn)

    def _channel(self, row: Any) -> Channel:
        decrypt = self.secrets.decrypt_optional
        return Channel(
            id=row["id"], tenant=row["tenant_slug"], provider=Provider(row["provider"]),
            key=row["key"], phone_number_id=row["phone_number_id"], waba_id=row["waba_id"],
            display_number=row["display_number"], api_base_url=row["api_base_url"],
            graph_version=row["graph_version"], mps=row["mps"], paused=bool(row["paused"]),
            pause_reason=row["pause_reason"], token=self.secrets.decrypt(row["token_encrypted"]),
            app_secret=decrypt(row["app_secret_encrypted"]),
            verify_token=decrypt(row["verify_token_encrypted"]),
            webhook_secret=decrypt(row["webhook_secret_encrypted"]),
            media_hosts=tuple(filter(None, (row["media_hosts"] or "").split(","))),
        )

    def touch_inbound(self, channel_ids: Sequence[int], at: datetime) -> None:
        """Record that events of these channels were stored at `at`. Not a configuration
        change: the version is not bumped (no process reloads its snapshot for this)."""
        if not channel_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(channels.update().where(
                channels.c.id.in_(list(channel_ids)),
                sa.or_(channels.c.last_inbound_at.is_(None),
                       channels.c.last_inbound_at < at)).values(last_inbound_at=at))

    def last_inbound(self) -> dict[int, datetime | None]:
        """Channel id -> when an event of its webhooks was last stored (None: never)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(channels.c.id, channels.c.last_inbound_at)).all()
        return {int(row[0]): row[1] for row in rows}

    # -- parked payloads -------------------------------------------------------------------

    def park(self, *, stage: str, reason: str, payload: str, provider: str | None = None,
             channel_key: str | None = None, raw_body: str | None = None,
             signature: str | None = None) -> int:
        if signature is not None and len(signature) > 200:
            signature = None  # longer than any valid header: it could never verify
        with self.engine.begin() as conn:
            result = conn.execute(parked.insert().values(
                created_at=utcnow(), stage=stage, provider=provider, channel_key=channel_key,
                reason=reason[:1000], payload=payload, replay_count=0, raw_body=raw_body,
                signature=signature))
            return _new_id(result)

    def parked_items(self, *, include_replayed: bool = False, limit: int = 1000
                     ) -> list[ParkedItem]:
        query = sa.select(parked).order_by(parked.c.id).limit(limit)
        if not include_replayed:
            query = query.where(parked.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return [ParkedItem(**row) for row in conn.execute(query).mappings().all()]

    def parked_item(self, item_id: int) -> ParkedItem:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(parked).where(parked.c.id == item_id)).mappings().first()
        if row is None:
            raise RegistryError(f"no parked item {item_id}")
        return ParkedItem(**row)

    def delete_parked(self, item_ids: Sequence[int]) -> list[int]:
        """Delete parked items for good; returns the ids that were there."""
        if not item_ids:
            return []
        with self.engine.begin() as conn:
            found = [int(r[0]) for r in conn.execute(sa.select(parked.c.id).where(
                parked.c.id.in_(list(item_ids))))]
            if found:
                conn.execute(parked.delete().where(parked.c.id.in_(found)))
        return found

    def mark_replayed(self, item_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(parked.update().where(parked.c.id == item_id).values(
                replayed_at=utcnow(), replay_count=parked.c.replay_count + 1))


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
