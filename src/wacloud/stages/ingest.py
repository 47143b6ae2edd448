"""Ingest: decide whether a webhook is authentic, and wrap it for the `inbound.raw` queue.

The HTTP layer calls these, durably queues the result, and only then answers 200. Nothing
else happens on the request path: parsing, media and storage come later, off the queue.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.observability.tracing import new_trace_id
from wacloud.providers.base import ProviderPort
from wacloud.stages.envelopes import INBOUND_RAW, Output, RawWebhook

log = logging.getLogger(__name__)


def signature_ok(provider: ProviderPort, body: bytes, signature: str | None,
                 broker: CredentialsBroker) -> bool:
    """Check a signed-body provider's signature with the app secret of the channels the
    payload names, or with every configured secret when it names none we know (it will then
    be parked). This only decides the HTTP answer: the receive stage checks each entry again
    against the channel it routes to (`receive.check_entries`)."""
    if not signature:
        return False
    uniform = broker.uniform_app_secret(provider.provider)
    if uniform is not None:  # the same answer as below, without parsing the body
        return provider.verify_signature(body, signature, (uniform,))
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not yet authenticated: anything may come
        payload = None
    keys, accounts = provider.signing_ids(payload) if isinstance(payload, dict) else (set(), set())
    return provider.verify_signature(
        body, signature, broker.app_secrets_for(provider.provider, keys, accounts))


def shared_secret_ok(expected: str | None, provided: str | None) -> bool:
    """Whapi and Chakra webhooks carry the channel's secret (header or query), not a signature."""
    if not expected or not provided:
        return False
    return hmac.compare_digest(expected.encode(), provided.encode())


def verify_challenge(provider: ProviderPort, query: Mapping[str, str],
                     broker: CredentialsBroker) -> str | None:
    """The GET handshake on a signed-body provider's webhook path: the answer, or None (403)."""
    return provider.verify_challenge(query, broker.verify_tokens(provider.provider))


def raw_output(provider: Provider, body: bytes, channel_key: str | None = None,
               signature: str | None = None) -> Output:
    trace = new_trace_id()
    envelope = RawWebhook(provider=provider.value, channel_key=channel_key,
                          received_at=time.time(), body=body, signature=signature, trace=trace)
    if log.isEnabledFor(logging.DEBUG):  # the webhook's hot path: one check when disabled
        log.debug("webhook received", extra={"trace_id": trace, "provider": provider.value,
                                             "channel": channel_key, "stage": "ingest"})
    return Output(INBOUND_RAW, OutgoingMessage(envelope.encode()))
