"""How a contact identifier matches stored values: as given, or by phone digits."""

from __future__ import annotations

import pytest

from wacloud.domain.contacts import ContactMatcher, anonymize_event, phone_digits
from wacloud.domain.model import Contact, InboundMessage, Provider, ProviderNotice, StatusUpdate


@pytest.mark.parametrize("value, digits", [
    ("+55 11 98765-4321", "5511987654321"),
    ("(11) 98765.4321", "11987654321"),
    ("5511987654321@s.whatsapp.net", "5511987654321"),
    ("5511987654321@C.US", "5511987654321"),
    (5511987654321, "5511987654321"),
    ("BR.1502576394655843", None),  # a BSUID: its digits are not a phone number
    ("120363025246125486@g.us", None),  # a group chat, not a person
    ("+55", None),
    (True, None),
    (None, None),
])
def test_phone_digits(value: object, digits: str | None) -> None:
    assert phone_digits(value) == digits


def test_phone_matches_every_written_form_and_nothing_longer() -> None:
    maria = ContactMatcher.parse(" +55 11 98765-4321 ")
    assert maria.is_phone
    for form in ("5511987654321", "+5511987654321", "+55 (11) 98765-4321",
                 "5511987654321@s.whatsapp.net", 5511987654321):
        assert maria.matches(form), form
    for other in ("55119876543210", "511987654321", "5521912345678", None, ""):
        assert not maria.matches(other), other


def test_user_id_matches_exactly_only() -> None:
    bsuid = ContactMatcher.parse("BR.1502576394655843")
    assert not bsuid.is_phone
    assert bsuid.matches("BR.1502576394655843")
    assert not bsuid.matches("1502576394655843")
    assert not bsuid.matches("br.1502576394655843")


@pytest.mark.parametrize("bad", ["", "   ", "+55", "12-34"])
def test_empty_or_too_short_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        ContactMatcher.parse(bad)


def test_mentions_in_json_and_text() -> None:
    maria = ContactMatcher.parse("5511987654321")
    assert maria.mentioned_in({"entry": [{"changes": [{"value": {"wa_id": "5511987654321"}}]}]})
    assert maria.mentioned_in([{"n": 5511987654321}])
    assert not maria.mentioned_in({"wa_id": "5521912345678", "id": "55119876543210"})
    assert maria.mentioned_in_text('{"from": "5511987654321", "broken')
    assert not maria.mentioned_in_text('{"id": "155119876543219"}')


def test_events_match_by_identity_or_by_their_message() -> None:
    maria = ContactMatcher.parse("BR.1502576394655843")
    message = InboundMessage(Provider.META, "PN", "wamid.1", "text",
                             contact=Contact(user_id="BR.1502576394655843"))
    assert maria.event_matches(message, set())
    status = StatusUpdate(Provider.WHAPI, "CH", "out.1", "read")
    assert not maria.event_matches(status, set())
    assert maria.event_matches(status, {("CH", "out.1")})
    notice = ProviderNotice(Provider.META, "PN", "user_preferences",
                            raw={"user_id": "BR.1502576394655843"})
    assert maria.event_matches(notice, set())


def test_anonymized_event_keeps_only_statistics() -> None:
    message = InboundMessage(Provider.META, "PN", "wamid.1", "text", sender="5511987654321",
                             recipient="5511940001234",
                             contact=Contact("5511987654321", "BR.1", "Maria"), text="oi",
                             content={"body": "oi"}, timestamp=1750857384,
                             raw={"from": "5511987654321"})
    blank = anonymize_event(message)
    assert isinstance(blank, InboundMessage)
    assert (blank.type, blank.provider_message_id, blank.timestamp) == ("text", "wamid.1",
                                                                        1750857384)
    assert blank.sender is None and blank.recipient is None and blank.text is None
    assert blank.contact == Contact() and blank.content == {} and blank.raw == {}
    assert message.text == "oi"  # the original is not changed
