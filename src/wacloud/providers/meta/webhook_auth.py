"""Meta WhatsApp Cloud API, webhook authentication: the `X-Hub-Signature-256` check, the ids a
body names (to pick the app secrets that may have signed it), the GET verification handshake,
and bodies of other Meta products that share the callback URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

from wacloud.providers.meta.inbound import as_dict, as_id, as_list

SIGNATURE_HEADER = "x-hub-signature-256"
WHATSAPP_OBJECT = "whatsapp_business_account"
_WHATSAPP_PREFIX = b'{"object":"whatsapp_business_account"'
_MAX_OBJECT_LABEL = 40


def routing_ids(payload: Any) -> tuple[set[str], set[str]]:
    """(phone_number_ids, WABA ids) a body names, to pick the app secret that signed it.
    Never raises: junk yields two empty sets."""
    phone_ids: set[str] = set()
    waba_ids: set[str] = set()
    if not isinstance(payload, dict):
        return phone_ids, waba_ids
    for entry in as_list(payload.get("entry")):
        if not isinstance(entry, dict):
            continue
        waba_id = as_id(entry.get("id"))
        if waba_id:
            waba_ids.add(waba_id)
        for change in as_list(entry.get("changes")):
            value = as_dict(as_dict(change).get("value"))
            for candidate in (as_dict(value.get("metadata")).get("phone_number_id"),
                              value.get("phone_number_id")):
                phone_id = as_id(candidate)
                if phone_id:
                    phone_ids.add(phone_id)
    return phone_ids, waba_ids


def sign(body: bytes, secret: str) -> str:
    """`X-Hub-Signature-256`'s value for `body` signed with the app secret `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """True if `X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of `body` under any of
    `secrets`. Every secret is tried so timing does not reveal which one matched."""
    if not header:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.strip().lower() != "sha256" or not given:
        return False
    expected = given.strip().lower().encode("utf-8", "replace")
    matched = False
    for secret in secrets:
        if not secret:
            continue
        digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(digest.encode("ascii"), expected):
            matched = True
    return matched


def verify_challenge(query: Mapping[str, str], tokens: Iterable[str]) -> str | None:
    """The GET handshake (`hub.mode=subscribe`, `hub.verify_token`, `hub.challenge`): the
    challenge to echo when the token is one of `tokens`, or None (403)."""
    mode, token = query.get("hub.mode"), query.get("hub.verify_token")
    challenge = query.get("hub.challenge")
    if mode != "subscribe" or not token or challenge is None:
        return None
    for expected in tokens:
        if hmac.compare_digest(expected.encode(), token.encode()):
            return challenge
    return None


def other_object(body: bytes) -> str | None:
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
