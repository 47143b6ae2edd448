"""Submissions in Meta's send format: business-scoped user ids and group recipients."""

from __future__ import annotations

from typing import Any

import pytest

from wacloud.domain.submission import InvalidMessage, parse_submission

BSUID = "BR.1502576394655843"
GROUP = "Y2FwaV9ncm91cDo1NTExOTQwMDAxMjM0OjEyMDM2MzA0MDQ2OTQyMzM4MjAZD"


def submit(**fields: Any) -> dict[str, Any]:
    return {"channel": "106540352242922", "type": "text", "text": {"body": "Oi"}, **fields}


def test_recipient_bsuid_stands_in_for_to() -> None:
    submission = parse_submission(submit(recipient=BSUID))
    assert submission.to == BSUID
    assert submission.recipient_type is None


def test_to_wins_over_recipient_like_meta() -> None:
    assert parse_submission(submit(to="5511987654321", recipient=BSUID)).to == "5511987654321"


def test_group_recipient() -> None:
    submission = parse_submission(submit(to=GROUP, recipient_type="group"))
    assert (submission.to, submission.recipient_type) == (GROUP, "group")
    individual = parse_submission(submit(to="5511987654321", recipient_type="individual"))
    assert individual.recipient_type is None


@pytest.mark.parametrize(("fields", "says"), [
    ({"recipient": "5511987654321"}, "business-scoped user id"),
    ({"recipient": 42}, "business-scoped user id"),
    ({}, "`to` (recipient) or `recipient`"),
    ({"to": GROUP, "recipient_type": "broadcast"}, "recipient_type"),
    ({"recipient": BSUID, "recipient_type": "group"}, "group goes in `to`"),
])
def test_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidMessage, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_submission(submit(**fields))
