"""Turn provider fixtures into payloads for one test's channels and fake-provider media."""

from __future__ import annotations

import copy
import os
from typing import Any

from wacloud.testing.fake_provider import FakeMedia, FakeProvider

MEDIA_TYPES = ("image", "video", "audio", "voice", "document", "sticker")
MAGIC = {"image/jpeg": b"\xff\xd8\xff\xe0", "image/png": b"\x89PNG\r\n\x1a\n",
         "application/pdf": b"%PDF-1.7\n", "audio/ogg": b"OggS", "image/webp": b"RIFF"}


def media_bytes(mime: str, size: int = 2048) -> bytes:
    head = MAGIC.get(mime.split(";")[0], b"")
    return head + os.urandom(size - len(head))


def meta_messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for e in payload["entry"] for c in e["changes"]
            for m in c["value"].get("messages", [])]


def retarget_meta(payload: dict[str, Any], phone_number_id: str, waba_id: str,
                  suffix: str = "") -> dict[str, Any]:
    """Point every entry at one channel; `suffix` makes message ids unique to a test."""
    data = copy.deepcopy(payload)
    for entry in data["entry"]:
        entry["id"] = waba_id
        for change in entry["changes"]:
            metadata = change["value"].get("metadata")
            if metadata is not None:
                metadata["phone_number_id"] = phone_number_id
            for message in change["value"].get("messages", []):
                message["id"] += suffix
            for status in change["value"].get("statuses", []):
                status["id"] += suffix
    return data


def attach_meta_media(payload: dict[str, Any], fake: FakeProvider,
                      provider: str = "meta") -> dict[str, FakeMedia]:
    """Register each media message's file in the fake provider; returns wamid -> media."""
    created: dict[str, FakeMedia] = {}
    for message in meta_messages(payload):
        kind = message["type"]
        if kind in MEDIA_TYPES and isinstance(message.get(kind), dict):
            body = message[kind]
            media = fake.add_media(media_bytes(body["mime_type"]), mime_type=body["mime_type"],
                                   provider=provider, filename=body.get("filename"))
            body["id"] = media.id
            body["sha256"] = media.sha256_b64
            created[message["id"]] = media
    return created


def retarget_whapi(payload: dict[str, Any], channel_id: str, suffix: str = "") -> dict[str, Any]:
    data = copy.deepcopy(payload)
    data["channel_id"] = channel_id
    for message in data.get("messages", []):
        message["id"] += suffix
    for status in data.get("statuses", []):
        status["id"] += suffix
    return data


def attach_whapi_media(payload: dict[str, Any], fake: FakeProvider, fake_url: str,
                       token: str | None = None) -> dict[str, FakeMedia]:
    created: dict[str, FakeMedia] = {}
    for message in payload.get("messages", []):
        kind = message["type"]
        if kind in MEDIA_TYPES and isinstance(message.get(kind), dict):
            body = message[kind]
            media = fake.add_media(media_bytes(body["mime_type"]), mime_type=body["mime_type"],
                                   provider="whapi", filename=body.get("filename"),
                                   token=token)
            body["id"] = media.id
            body["sha256"] = media.sha256_b64
            body["file_size"] = media.size
            if "link" in body:
                body["link"] = f"{fake_url}/whapi-files/{media.id}"
            created[message["id"]] = media
    return created
