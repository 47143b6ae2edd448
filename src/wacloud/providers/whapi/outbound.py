"""Whapi.Cloud, send side: Meta-format outbound messages translated into Whapi's own endpoints
and bodies, and what Whapi's answer means for the outbox row.

Whapi drives a linked-device session, so there are no templates, and the failures that matter
are channel states (QR, STOP, not authorized) rather than per-message codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from wacloud.domain.model import (
    JSON,
    Channel,
    OutboundMessage,
    ProviderError,
    ProviderRequest,
    SendOutcome,
    SendResult,
)
from wacloud.providers.errors import (
    UnsupportedMessage,
    excerpt,
    header,
    load_json,
    parse_retry_after,
    redact_error,
)
from wacloud.providers.meta import outbound as meta_outbound
from wacloud.providers.meta.inbound import as_dict

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})

# Error texts that mean the channel itself cannot send (session logged out, subscription
# stopped, not authorized): pausing beats failing every queued row.
_CHANNEL_STATE = re.compile(
    r"\bQR\b|not\s+authori[sz]ed|unauthori[sz]ed|\bSTOP\b|SYNC_ERROR|logged\s+out"
    r"|not\s+(?:logged\s+in|connected)|channel\s+(?:is\s+)?(?:not\s+active|inactive|stopped)",
    re.IGNORECASE)


def _headers(channel: Channel) -> dict[str, str]:
    return {"Authorization": f"Bearer {channel.token}", "Content-Type": "application/json"}


def _put(fields: JSON, **values: Any) -> JSON:
    """`fields` plus the given values that are not None."""
    fields.update({k: v for k, v in values.items() if v is not None})
    return fields


def _vcard_escape(value: Any) -> str:
    text = str(value)
    for char, escaped in (("\\", "\\\\"), (",", "\\,"), (";", "\\;"), ("\n", "\\n")):
        text = text.replace(char, escaped)
    return text


def vcard(contact: JSON) -> tuple[str, str]:
    """(display name, vCard 3.0 text) for one Meta `contacts[]` entry."""
    name = as_dict(contact.get("name"))
    parts = [name.get(k) or "" for k in ("last_name", "first_name", "middle_name", "prefix",
                                         "suffix")]
    full = name.get("formatted_name") or " ".join(
        p for p in (name.get("first_name"), name.get("last_name")) if p)
    if not full:
        raise UnsupportedMessage("contact has no name")
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"N:{';'.join(_vcard_escape(p) for p in parts)}",
             f"FN:{_vcard_escape(full)}"]
    org = contact.get("org")
    if isinstance(org, dict) and (org.get("company") or org.get("department")):
        company = [_vcard_escape(org.get(k) or "") for k in ("company", "department")]
        lines.append(f"ORG:{';'.join(company).rstrip(';')}")
        if org.get("title"):
            lines.append(f"TITLE:{_vcard_escape(org['title'])}")
    for phone in contact.get("phones") or []:
        if not isinstance(phone, dict) or not phone.get("phone"):
            continue
        params = f";type={phone['type']}" if phone.get("type") else ""
        waid = phone.get("wa_id") or re.sub(r"\D", "", str(phone["phone"]))
        params += f";waid={waid}" if waid else ""
        lines.append(f"TEL{params}:{phone['phone']}")
    for mail in contact.get("emails") or []:
        if isinstance(mail, dict) and mail.get("email"):
            params = f";type={mail['type']}" if mail.get("type") else ""
            lines.append(f"EMAIL{params}:{mail['email']}")
    for url in contact.get("urls") or []:
        if isinstance(url, dict) and url.get("url"):
            lines.append(f"URL:{url['url']}")
    lines.append("END:VCARD")
    return full, "\n".join(lines)


def _text_part(value: Any) -> JSON | None:
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return {"text": value["text"]}
    return None


def _interactive(content: JSON) -> JSON:
    """Whapi's /messages/interactive body (without `to`) for Meta's interactive object."""
    kind = content.get("type")
    action = as_dict(content.get("action"))
    head = content.get("header")
    if head is not None and (not isinstance(head, dict) or head.get("type", "text") != "text"):
        raise UnsupportedMessage("Whapi interactive messages only take a text header")
    if kind == "button":
        buttons = []
        for button in action.get("buttons") or []:
            reply = button.get("reply") if isinstance(button, dict) else None
            if not isinstance(reply, dict):
                raise UnsupportedMessage("interactive button without a reply object")
            buttons.append({"type": "quick_reply", "title": reply.get("title"),
                            "id": reply.get("id")})
        whapi_action: JSON = {"buttons": buttons}
    elif kind == "list":
        sections = [
            _put({"title": s["title"]} if s.get("title") else {},
                 rows=[_put({"id": r.get("id"), "title": r.get("title")},
                            description=r.get("description"))
                       for r in map(as_dict, s.get("rows") or [])])
            for s in map(as_dict, action.get("sections") or [])]
        whapi_action = {"list": _put({"sections": sections}, label=action.get("button"))}
    elif kind == "cta_url":
        params = as_dict(action.get("parameters"))
        whapi_action = {"buttons": [{"type": "url", "title": params.get("display_text"),
                                     "id": "cta_url", "url": params.get("url")}]}
        kind = "button"
    else:
        raise UnsupportedMessage(f"interactive {kind!r} messages are not supported by Whapi")
    return _put({"type": kind, "action": whapi_action}, header=_text_part(head),
                body=_text_part(content.get("body")), footer=_text_part(content.get("footer")))


def _post_body(message: OutboundMessage, content: JSON) -> tuple[str, JSON]:
    """(endpoint kind, body fields without `to`/`quoted`) of a POST /messages/{kind}."""
    kind = message.type or ""
    if kind == "text":
        if not isinstance(content.get("body"), str):
            raise UnsupportedMessage("text message has no body")
        return "text", {"body": content["body"],
                        "no_link_preview": not content.get("preview_url", False)}
    if kind in MEDIA_TYPES:
        media = content.get("link") or content.get("id")
        if not media:
            raise UnsupportedMessage(f"{kind} message has neither link nor id")
        if kind == "audio" and content.get("voice"):
            kind = "voice"
        return kind, _put({"media": media}, caption=content.get("caption"),
                          filename=content.get("filename"))
    if kind == "location":
        return "location", _put({"latitude": content.get("latitude"),
                                 "longitude": content.get("longitude")},
                                name=content.get("name"), address=content.get("address"))
    if kind == "contacts":
        contacts = meta_outbound.contacts_list(message.content)
        if not isinstance(contacts[0], dict):
            raise UnsupportedMessage("contacts message has no contact object")
        name, card = vcard(contacts[0])
        return "contact", {"name": name, "vcard": card}
    if kind == "interactive":
        return "interactive", _interactive(content)
    if kind == "template":
        raise UnsupportedMessage("Whapi cannot send Meta templates")
    raise UnsupportedMessage(f"message type {kind!r} is not supported by Whapi")


def build_send(channel: Channel, message: OutboundMessage) -> ProviderRequest:
    """The Whapi request that sends `message` through `channel`."""
    if message.is_legacy:
        return meta_outbound.legacy_request(channel, message)
    content = message.content if isinstance(message.content, dict) else {}
    if message.type in ("read", "reaction"):
        target = content.get("message_id")
        if not isinstance(target, str) or not target:
            raise UnsupportedMessage(f"{message.type} without a message_id")
        url = f"{channel.base_url}/messages/{quote(target, safe='')}"
        if message.type == "read":
            return ProviderRequest(method="PUT", url=url, headers=_headers(channel))
        return ProviderRequest(method="PUT", url=f"{url}/reaction", headers=_headers(channel),
                               json={"emoji": content.get("emoji", "")})
    if not message.type:
        raise UnsupportedMessage("message has no type")
    if not message.recipient:
        raise UnsupportedMessage("message has no recipient")
    kind, fields = _post_body(message, content)
    body = _put({"to": message.recipient}, quoted=message.reply_to)
    body.update(fields)
    return ProviderRequest(method="POST", url=f"{channel.base_url}/messages/{kind}",
                           headers=_headers(channel), json=body)


def _error(payload: Any, status: int) -> ProviderError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, str):
        return ProviderError(code=f"http_{status}", reason=error)
    if not isinstance(error, dict):
        message = payload.get("message") if isinstance(payload, dict) else None
        if isinstance(message, str):
            reason = message
        elif 200 <= status < 300:
            reason = "provider did not confirm the send (sent/success false)"
        else:
            reason = f"HTTP {status}"
        return ProviderError(code=f"http_{status}", reason=reason)
    code = error.get("code")
    details = error.get("details")
    return ProviderError(code=str(code) if code not in (None, "") else f"http_{status}",
                         reason=str(error.get("message") or f"HTTP {status}"),
                         details=details if isinstance(details, str) else None)


def classify(status: int, body: bytes, headers: Mapping[str, str], *,
             secrets: Iterable[str] = ()) -> SendResult:
    """What a Whapi send response means for the row.

    2xx with a message id (or `success: true` for read/reaction) is accepted; a 2xx saying
    `sent: false` / `success: false` failed. A bare 2xx is accepted without an id for the
    reason given in `errors.classify_graph` (it may have been sent; a retry could duplicate it).
    """
    payload = load_json(body)
    data = payload if isinstance(payload, dict) else {}
    secrets = tuple(secrets)
    text = excerpt(body, secrets)
    if 200 <= status < 300:
        message = as_dict(data.get("message"))
        msg_id = message.get("id") if isinstance(message.get("id"), str) else None
        if msg_id and data.get("sent") is not False:
            return SendResult(SendOutcome.ACCEPTED, provider_message_id=msg_id,
                              http_status=status, response_excerpt=text)
        if data.get("sent") is not False and data.get("success") is not False \
                and "error" not in data:
            return SendResult(SendOutcome.ACCEPTED, http_status=status, response_excerpt=text)
    error = redact_error(_error(payload, status), secrets)
    state_text = f"{error.reason} {error.details or ''}" if payload is not None else (text or "")
    if status in (401, 402, 403) or _CHANNEL_STATE.search(state_text):
        outcome = SendOutcome.PAUSE
    elif status in (408, 425, 429) or status >= 500:
        outcome = SendOutcome.RETRY
    else:
        outcome = SendOutcome.FAILED
    retry_after = None
    if outcome is not SendOutcome.FAILED:
        retry_after = parse_retry_after(header(headers, "Retry-After"))
    return SendResult(outcome, error=error, retry_after=retry_after, http_status=status,
                      response_excerpt=text, channel_throttled=status == 429)
