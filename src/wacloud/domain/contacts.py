"""Who a data subject is in our data, for LGPD erasure and export.

A contact is named by one identifier: a phone number or Meta's business-scoped user id (BSUID).
Values are matched exactly as given and, when the identifier is a phone number, also by their
digits, because the same person shows up as "+55 11 98765-4321" in a tenant's outbox,
"5511987654321" in a Meta webhook and "5511987654321@s.whatsapp.net" as a Whapi chat id.
A BSUID ("BR.1502...") has letters, so it is only ever matched exactly: its digits alone could
be someone's phone number.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wacloud.domain.model import Contact, Event, InboundMessage, ProviderNotice, StatusUpdate

# Personal chat ids of Whapi / WhatsApp Web carry the phone digits before one of these.
CHAT_SUFFIXES = ("@s.whatsapp.net", "@c.us")
# What a written phone number may contain besides digits.
_PHONE = re.compile(r"\+?[\d\s().\-/]+")
_NON_DIGITS = re.compile(r"\D")
# Fewer digits than this cannot name one person; refusing them keeps a typo like "+55" from
# matching every short number in a tenant's data.
MIN_PHONE_DIGITS = 6

MessageRef = tuple[str, str]  # (channel, provider message id)


def _strip_chat_suffix(text: str) -> str:
    lowered = text.lower()
    for suffix in CHAT_SUFFIXES:
        if lowered.endswith(suffix):
            return text[: -len(suffix)]
    return text


def phone_digits(value: object) -> str | None:
    """The digits of `value` if it is written like a phone number (or a personal chat id),
    else None. JSON numbers count: some payloads carry phone numbers unquoted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = _strip_chat_suffix(value.strip())
    else:
        return None
    if not _PHONE.fullmatch(text):
        return None
    digits = _NON_DIGITS.sub("", text)
    return digits if len(digits) >= MIN_PHONE_DIGITS else None


@dataclass(frozen=True, slots=True)
class ContactMatcher:
    """Decides whether a stored value names the contact."""

    given: str
    digits: str | None  # set when the contact was given as a phone number

    @classmethod
    def parse(cls, contact: str) -> ContactMatcher:
        given = contact.strip()
        if not given:
            raise ValueError("the contact is empty")
        digits = phone_digits(given)
        if digits is None and _PHONE.fullmatch(_strip_chat_suffix(given)):
            raise ValueError(f"a phone number needs at least {MIN_PHONE_DIGITS} digits")
        if digits is None and any(c.isspace() for c in given):
            # Not a phone number, and no user id, group id or BSUID has spaces: a typo
            # would otherwise "erase" nothing and report success.
            raise ValueError(f"{given!r} is neither a phone number nor a user id (a BSUID "
                             "such as BR.1502576394655843, or a WhatsApp id)")
        return cls(given, digits)

    @property
    def is_phone(self) -> bool:
        return self.digits is not None

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        if isinstance(value, str) and value.strip() == self.given:
            return True
        return self.digits is not None and phone_digits(value) == self.digits

    def matches_any(self, values: Iterable[object]) -> bool:
        return any(self.matches(v) for v in values)

    def mentioned_in(self, data: Any) -> bool:
        """True if any value inside a JSON document names the contact (notices, raw bodies)."""
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif self.matches(item):
                return True
        return False

    def mentioned_in_text(self, text: str) -> bool:
        """For bodies that cannot be parsed: the identifier as given, or its digits, appears
        in the text as a whole word (not inside a longer id or digit run)."""
        if re.search(rf"(?<!\w){re.escape(self.given)}(?!\w)", text):
            return True
        if self.digits is None:
            return False
        return re.search(rf"(?<!\d){self.digits}(?!\d)", text) is not None

    # -- normalized events (queues, parked items) -------------------------------------------

    def message_matches(self, message: InboundMessage) -> bool:
        return self.matches_any((message.sender, message.recipient, message.contact.wa_id,
                                 message.contact.user_id))

    def event_matches(self, event: Event, refs: set[MessageRef]) -> bool:
        """`refs` are the contact's messages: a receipt for one of them is the contact's even
        when it does not name a recipient (some Whapi statuses)."""
        if isinstance(event, InboundMessage):
            return self.message_matches(event)
        if isinstance(event, StatusUpdate):
            return (self.matches_any((event.recipient, event.recipient_user_id))
                    or (event.channel_key, event.provider_message_id) in refs)
        return self.mentioned_in(event.raw)


def anonymize_event(event: Event) -> Event:
    """The event with everything that identifies or describes the person blanked, kept for
    statistics: type, direction, channel, ids, timestamps, statuses and error codes stay.
    Media is dropped (not just its key) so that no later stage downloads the file again."""
    if isinstance(event, InboundMessage):
        return dataclasses.replace(
            event, sender=None, recipient=None, contact=Contact(), text=None, content={},
            media=None, raw={})
    if isinstance(event, StatusUpdate):
        return dataclasses.replace(event, recipient=None, recipient_user_id=None, raw={})
    assert isinstance(event, ProviderNotice)
    return dataclasses.replace(event, raw={})
