"""Hypothesis strategies for bad input: provider fixtures mutated leaf by leaf and subtree by
subtree, JSON of every awkward type, and bodies that are not JSON or not UTF-8 at all.

Mutating real fixtures (not only random JSON) is what reaches a parser's deep branches: a
random document is refused at its first check, a fixture with one field replaced gets past
every check but one. Profiles: "ci" (the default, a few hundred examples per test) and
"long" (`HYPOTHESIS_PROFILE=long`, for a run of several minutes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parent / "fixtures"

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def fixtures(provider: str) -> list[Any]:
    """Every webhook fixture of a provider (not the `send/` answers), parsed."""
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((FIXTURES / provider).glob("*.json"))]


# Names the parsers branch on: a mutated `type` or key from this list takes another branch
# with the rest of the fixture still in place.
TYPE_NAMES = ["text", "image", "video", "audio", "voice", "gif", "document", "sticker",
              "interactive", "button", "button_reply", "list_reply", "nfm_reply", "reaction",
              "order", "system", "contacts", "contact", "contact_list", "unsupported", "unknown",
              "location", "reply", "poll", "link_preview", "action", "messages", "statuses",
              "errors", "context", "referral", "metadata", "value", "entry", "changes",
              "whatsapp_business_account", "channel_id", "event", "from_me", "chat_id", "list",
              "delivered", "read", "sent", "failed", "played", ""]


class Deep:
    """A list nested `depth` levels deep: `to_body` writes it as text, since `json.dumps`
    itself cannot write what is deeper than its recursion limit."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


_DEEP = re.compile(r'"\\u0000deep(\d+)\\u0000"')


def to_body(value: Any) -> bytes:
    """JSON bytes of `value` as a sender might write them: NaN and Infinity as Python's json
    writes them, lone surrogates as `\\ud800` escapes, `Deep` as real nesting."""
    text = json.dumps(value, default=lambda d: f"\0deep{d.depth}\0")
    text = _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)
    return text.encode("ascii")


def huge_text(size: int) -> str:
    return ("Olá 👍 " * (size // 6 + 1))[:size]


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**300) | st.integers(max_value=-10**18,
                                                                   min_value=-10**300),
    st.floats(),  # NaN, infinities and -0.0 included
    st.text(st.characters(codec=None, exclude_categories=())),  # lone surrogates included
    st.sampled_from(TYPE_NAMES),
    st.integers(min_value=0, max_value=200_000).map(huge_text),
    st.builds(Deep, st.integers(min_value=2, max_value=3000)),
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.one_of(st.sampled_from(TYPE_NAMES), st.text(max_size=8)), children,
                      max_size=4),
    max_leaves=12)

Path_ = tuple[str | int, ...]


def _paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    found: list[Path_] = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_paths(child, (*prefix, index)))
    return found


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any]) -> Any:
    """A document from `documents` with one to four of its nodes replaced by awkward values,
    deleted, or given a sibling key of a type name."""
    document = _copy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "type"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "type":
            parent[last] = draw(st.sampled_from(TYPE_NAMES))
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(TYPE_NAMES))] = draw(json_values)
        else:
            parent.insert(int(last), draw(json_values))
    return document


@st.composite
def damaged(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` with bytes that are not UTF-8 put in, or cut short."""
    if not body:
        return b"\xff"
    at = draw(st.integers(min_value=0, max_value=len(body)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80",
                                 b"\x00", b"\xfe\xff"]))
    if draw(st.booleans()):
        return body[:at] + junk + body[at:]
    return body[:at]


def bodies(documents: list[Any]) -> st.SearchStrategy[bytes]:
    """Webhook bodies: mutated fixtures (most), damaged ones, any JSON, any bytes."""
    as_body: Callable[[Any], bytes] = to_body
    mutated_bodies = mutated(documents).map(as_body)
    return st.one_of(
        mutated_bodies, mutated_bodies, mutated_bodies,
        mutated_bodies.flatmap(damaged),
        json_values.map(as_body),
        st.binary(max_size=256),
    )
