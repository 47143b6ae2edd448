"""The credentials broker as a service: `POST /internal/credentials` and the Lambda handler.

Both call `CredentialsService.handle` with the `Authorization` header and the raw body
`{"provider": "meta|whapi|chakra", "id": "..."}`, where `id` is a Meta phone_number_id or
WABA id (a WABA with one number), a Whapi channel id or a Chakra plugin id. The answer names
the tenant, the channel, its API base URL, the decrypted token and the tenant DB URL.

Callers authenticate with a service key (`wacloud servicekey create`), stored hashed and
compared in constant time. Every call with a valid key, answered or not, is written to the
credential audit (who, which id, when, outcome; never the secret). A call without a valid key
writes nothing (a stranger must not be able to grow the registry): it is counted in
`wacloud_credentials_unauthenticated_total` instead. With no active service key the endpoint
is disabled and answers 404 like an unknown path. Over HTTP it is served only on the internal
listener (`wacloud serve --internal-host/--internal-port`), never on the webhook port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wacloud.adapters.db.registry.api_keys import match_service_key, service_keys_active
from wacloud.adapters.db.registry.audit import AuditEntry, record_audit
from wacloud.adapters.db.registry.store import Registry, RegistryError
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Channel, Provider
from wacloud.observability.metrics import CREDENTIALS_UNAUTHENTICATED
from wacloud.providers import port

MAX_BODY_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    provider: str | None
    lookup_id: str | None
    problem: str | None = None


def parse_query(body: bytes | str | None) -> Query:
    """Read `{"provider", "id"}`; also what an unauthenticated caller asked, for the audit."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return Query(None, None, "the body must be a JSON object")
    if not isinstance(data, dict):
        return Query(None, None, "the body must be a JSON object")
    provider, lookup_id = data.get("provider"), data.get("id")
    provider = provider if isinstance(provider, str) else None
    lookup_id = lookup_id if isinstance(lookup_id, str) else None
    if provider not in {p.value for p in Provider}:
        return Query(provider, lookup_id, "provider must be one of meta, whapi, chakra")
    if not lookup_id:
        return Query(provider, lookup_id, "id must be a non-empty string")
    return Query(provider, lookup_id)


def bearer(authorization: str | None) -> str | None:
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


class CredentialsService:
    def __init__(self, broker: CredentialsBroker, tenants_dir: Path) -> None:
        self.broker = broker
        self.tenants_dir = tenants_dir

    @property
    def registry(self) -> Registry:
        return self.broker.registry

    def handle(self, authorization: str | None, body: bytes | str | None, *, via: str,
               source: str | None = None) -> Answer:
        """Blocking (registry reads and the audit write): run it off the event loop."""
        if not service_keys_active(self.registry):
            return Answer(404, {"error": "not found"})
        query = parse_query(body)
        presented = bearer(authorization)
        key = match_service_key(self.registry, presented) if presented else None

        def done(status: int, outcome: str, answer: dict[str, Any],
                 channel: Channel | None = None) -> Answer:
            record_audit(self.registry, AuditEntry(
                via=via, outcome=outcome, status=status, key=key, source=source,
                provider=query.provider, lookup_id=query.lookup_id,
                tenant=channel.tenant if channel else None,
                channel_key=channel.key if channel else None))
            return Answer(status, answer)

        if presented is None:
            CREDENTIALS_UNAUTHENTICATED.labels(via, "unauthenticated").inc()
            return Answer(401, {"error": "a service key is required (Authorization: Bearer KEY)"})
        if key is None:
            CREDENTIALS_UNAUTHENTICATED.labels(via, "denied").inc()
            return Answer(403, {"error": "invalid service key"})
        if query.problem or query.provider is None or query.lookup_id is None:
            return done(400, "bad_request", {"error": query.problem or "bad request"})
        channel = self._find(Provider(query.provider), query.lookup_id)
        if channel is None:
            return done(404, "not_found", {"error": "no channel for this provider and id (a "
                                           "WABA id with several numbers: ask by number)"})
        try:
            db_url = self._tenant_db_url(channel.tenant)
        except RegistryError:
            return done(404, "not_found", {"error": "the channel's tenant is gone"})
        return done(200, "ok", credentials_body(channel, db_url), channel)

    def _find(self, provider: Provider, lookup_id: str) -> Channel | None:
        # Cheap when nothing changed (one version read); a Lambda has no background watcher.
        self.broker.refresh()
        account = lookup_id if port(provider).routes_by_account else None
        channel = self.broker.channel(provider, lookup_id, account)
        if channel is None and self.broker.refresh_after_miss():
            channel = self.broker.channel(provider, lookup_id, account)
        return channel

    def _tenant_db_url(self, slug: str) -> str:
        """From the registry only; the default is the SQLite file the gateway uses."""
        tenant = self.registry.tenant(slug)
        return tenant.db_url or f"sqlite:///{(self.tenants_dir / f'{slug}.db').resolve()}"


def credentials_body(channel: Channel, db_url: str) -> dict[str, Any]:
    number = channel.phone_number_id or (
        channel.key if port(channel.provider).key_is_number else None)
    return {"tenant": channel.tenant, "channel": channel.key, "channel_id": channel.id,
            "provider": channel.provider.value, "phone_number_id": number,
            "waba_id": channel.waba_id, "base_url": channel.base_url,
            "graph_version": channel.graph_version, "paused": channel.paused,
            "pause_reason": channel.pause_reason, "token": channel.token, "db_url": db_url}
