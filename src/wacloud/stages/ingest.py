"""Ingest: decide whether a webhook is authentic, and wrap it for the `inbound.raw` queue.

The HTTP layer calls these, durably queues the result, and only then answers 200. Nothing
else happens on the request path: parsing, media and storage come later, off the queue.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.observability.tracing import new_trace_id
from wacloud.providers import meta
from wacloud.stages.envelopes import INBOUND_RAW, Output, RawWebhook

log = logging.getLogger(__name__)


def meta_signature_ok(body: bytes, signature: str | None, broker: CredentialsBroker) -> bool:
    """Check `X-Hub-Signature-256` with the app secret of the channels the payload names, or
    with every configured secret when it names none we know (it will then be parked). This
    only decides the HTTP answer: the receive stage checks each entry again against the
    channel it routes to (`receive.check_entries`)."""
    if not signature:
        return False
    uniform = broker.uniform_meta_secret()
    if uniform is not None:  # the same answer as below, without parsing the body
        return meta.verify_signature(body, signature, (uniform,))
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not yet authenticated: anything may come
        payload = None
    phone_ids, waba_ids = meta.routing_ids(payload) if isinstance(payload, dict) else (set(), set())
    return meta.verify_signature(body, signature, broker.meta_secrets_for(phone_ids, waba_ids))


def shared_secret_ok(expected: str | None, provided: str | None) -> bool:
    """Whapi and Chakra webhooks carry the channel's secret (header or query), not a signature."""
    if not expected or not provided:
        return False
    return hmac.compare_digest(expected.encode(), provided.encode())


def meta_verify_challenge(mode: str | None, token: str | None, challenge: str | None,
                          broker: CredentialsBroker) -> str | None:
    """The GET handshake: the challenge to echo, or None (403)."""
    if mode != "subscribe" or not token or challenge is None:
        return None
    for expected in broker.meta_verify_tokens():
        if hmac.compare_digest(expected.encode(), token.encode()):
            return challenge
    return None


WHATSAPP_OBJECT = "whatsapp_business_account"
_WHATSAPP_PREFIX = b'{"object":"whatsapp_business_account"'
_MAX_OBJECT_LABEL = 40


def other_meta_object(body: bytes) -> str | None:
    """The `object` of a Meta body from another product sharing the callback URL ("page",
    "instagram", ...), as a metric label; None for a WhatsApp body or one that is not a JSON
    object with a string `object` (those go on, to be stored or parked)."""
    if body.startswith(_WHATSAPP_PREFIX):  # Meta's own compact JSON: no parse needed
        return None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    kind = payload.get("object") if isinstance(payload, dict) else None
    if not isinstance(kind, str) or kind == WHATSAPP_OBJECT:
        return None
    # Signed, so not a stranger's label; still, keep odd values to one series.
    if len(kind) > _MAX_OBJECT_LABEL or not kind.replace("_", "").isalnum():
        return "other"
    return kind


def raw_output(provider: Provider, body: bytes, channel_key: str | None = None,
               signature: str | None = None) -> Output:
    trace = new_trace_id()
    envelope = RawWebhook(provider=provider.value, channel_key=channel_key,
                          received_at=time.time(), body=body, signature=signature, trace=trace)
    if log.isEnabledFor(logging.DEBUG):  # the webhook's hot path: one check when disabled
        log.debug("webhook received", extra={"trace_id": trace, "provider": provider.value,
                                             "channel": channel_key, "stage": "ingest"})
    return Output(INBOUND_RAW, OutgoingMessage(envelope.encode()))
