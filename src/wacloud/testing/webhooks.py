"""Build and sign provider webhook bodies (tests, the demo and the benchmarks share these)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any


def sign(body: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` header value Meta would send."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def meta_envelope(phone_number_id: str, waba_id: str, display_number: str,
                  messages: list[dict[str, Any]] | None = None,
                  statuses: list[dict[str, Any]] | None = None,
                  contacts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_number, "phone_number_id": phone_number_id},
    }
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": value}]}]}


def meta_text(sender: str, body: str, message_id: str, name: str = "Maria Souza"
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A text message and its contact entry."""
    message = {"from": sender, "id": message_id, "timestamp": str(int(time.time())),
               "type": "text", "text": {"body": body}}
    contact = {"profile": {"name": name}, "wa_id": sender}
    return message, contact


def meta_media(sender: str, kind: str, media_id: str, mime_type: str, sha256: str,
               message_id: str, caption: str | None = None, filename: str | None = None
               ) -> dict[str, Any]:
    media: dict[str, Any] = {"id": media_id, "mime_type": mime_type, "sha256": sha256}
    if caption is not None:
        media["caption"] = caption
    if filename is not None:
        media["filename"] = filename
    return {"from": sender, "id": message_id, "timestamp": str(int(time.time())),
            "type": kind, kind: media}


def meta_status(message_id: str, status: str, recipient: str,
                timestamp: int | None = None) -> dict[str, Any]:
    """A delivery receipt (`sent`, `delivered`, `read`, ...) of a message we sent."""
    return {"id": message_id, "status": status,
            "timestamp": str(timestamp if timestamp is not None else int(time.time())),
            "recipient_id": recipient}


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
