"""A contact's data that is not in the tenant DB yet: queued messages and parked payloads.

Webhook bodies and event batches often carry several people at once (Meta batches, a Whapi
page of messages). Such an item is split: the contact's events are removed (or anonymized) and
what remains is put back, so nothing of anyone else is lost. An item that is only the contact's
is deleted. A body that cannot be parsed cannot be split; it is deleted when it names the
contact, since it could only ever be parked.

Only events that route to the tenant, or to no tenant at all (they would be parked, and would
reach this tenant on replay once its channel exists), are touched; another tenant's data about
the same phone number is that tenant's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from wacloud.adapters.queue.base import Queue, ReceivedMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.contacts import ContactMatcher, MessageRef, anonymize_event
from wacloud.domain.model import Event, InboundMessage, PayloadError, Provider, event_from_dict
from wacloud.providers import port
from wacloud.providers.base import WebhookAuth
from wacloud.stages import envelopes
from wacloud.stages.envelopes import RawWebhook, dumps, envelope_bytes, envelope_text
from wacloud.stages.receive import check_entries, parse, refuse

Action = Literal["keep", "delete", "rewrite"]
_PARSE_ERRORS = (PayloadError, ValueError, KeyError, TypeError, UnicodeDecodeError)
# A whole queue file's worth: the embedded queue scans in one call (queues drain in seconds,
# so this is normally a handful of messages).
SCAN_LIMIT = 10_000_000


@runtime_checkable
class ScannableQueue(Protocol):
    """A queue that can list every message in any state (the embedded SQLite queue can; SQS
    cannot, so there the contact's messages drain into the tenant DB and are erased there)."""

    async def iter_all(self, limit: int = 1000) -> list[ReceivedMessage]: ...


@dataclass(slots=True)
class Scope:
    """What to look for: the contact, within one tenant."""

    tenant: str
    matcher: ContactMatcher
    broker: CredentialsBroker
    outbound_ids: set[int] = field(default_factory=set)  # the contact's outbox rows
    refs: set[MessageRef] = field(default_factory=set)  # the contact's messages
    # Media keys of other people's queued messages: an identical file shares its key.
    others_media: set[str] = field(default_factory=set)

    def owns(self, event: Event) -> bool:
        channel = self.broker.channel(event.provider, event.channel_key, event.account_key)
        return channel is None or channel.tenant == self.tenant

    def owns_key(self, provider: str, channel_key: str) -> bool:
        try:
            channel = self.broker.channel(Provider(provider), channel_key)
        except ValueError:  # not a provider we know: nobody's channel
            return True
        return channel is None or channel.tenant == self.tenant

    def is_contacts(self, event: Event) -> bool:
        return self.owns(event) and self.matcher.event_matches(event, self.refs)


@dataclass(slots=True)
class Plan:
    """What to do with one stored item."""

    action: Action = "keep"
    body: bytes | None = None  # the remainder, for a rewrite
    matched: list[dict[str, Any]] = field(default_factory=list)  # the contact's part
    media_keys: set[str] = field(default_factory=set)


@dataclass(slots=True)
class QueueFinding:
    queue: Queue
    message: ReceivedMessage
    plan: Plan


# -- splitting event lists ---------------------------------------------------------------------

def _split(events: list[Event], scope: Scope, anonymize: bool
           ) -> tuple[list[Event], list[Event]]:
    kept: list[Event] = []
    matched: list[Event] = []
    for event in events:
        if scope.is_contacts(event):
            matched.append(event)
            if anonymize:
                kept.append(anonymize_event(event))
        else:
            kept.append(event)
    return kept, matched


def _plan_events(events: list[Event], scope: Scope, anonymize: bool,
                 encode: Callable[[list[Event]], bytes]) -> Plan:
    kept, matched = _split(events, scope, anonymize)
    if not matched:
        return Plan()
    plan = Plan(matched=[e.to_dict() for e in matched])
    plan.media_keys = {e.media.key for e in matched
                       if isinstance(e, InboundMessage) and e.media and e.media.key}
    if kept:
        plan.action, plan.body = "rewrite", encode(kept)
    else:
        plan.action = "delete"
    return plan


def _events_envelope(raw: RawWebhook, events: list[Event], scope: Scope) -> bytes:
    """A raw-queue envelope holding already-parsed events; the receive stage takes it like a
    webhook, without a signature to check again (the signed body holds the contact's data and
    cannot stay). So a queued Meta webhook's events are checked here, as the receive stage
    would: those its signature does not authenticate are refused now."""
    if (raw.kind == "webhook" and not raw.legacy
            and port(raw.provider).webhook_auth is WebhookAuth.SIGNED_BODY):
        authentic, refused, unroutable = check_entries(events, raw.body, raw.signature,
                                                       scope.broker)
        if refused:
            refuse(refused, "signature",
                   "the body's signature does not verify with that channel's app secret")
        keep = {id(e) for e in authentic + unroutable}
        events = [e for e in events if id(e) in keep]
    body = dumps([e.to_dict() for e in events])
    return RawWebhook(provider=raw.provider, channel_key=raw.channel_key,
                      received_at=raw.received_at, body=body, kind="events",
                      trace=raw.trace).encode()


def _raw_events(data: bytes) -> tuple[RawWebhook, list[Event] | None]:
    raw = RawWebhook.decode(data)
    try:
        return raw, parse(raw)
    except _PARSE_ERRORS:
        return raw, None


def _plan_unparseable(text: str, scope: Scope, raw: RawWebhook | None = None) -> Plan:
    # The header may still say whose channel it came in on; Meta bodies name it only inside.
    if raw is not None and raw.channel_key and not scope.owns_key(raw.provider,
                                                                  raw.channel_key):
        return Plan()
    if scope.matcher.mentioned_in_text(text):
        return Plan(action="delete", matched=[{"unparseable_body": text}])
    return Plan()


def plan_raw(data: bytes, scope: Scope, anonymize: bool) -> Plan:
    """`inbound.raw`: a webhook body (or a replayed event list) behind a one-line header."""
    try:
        raw, events = _raw_events(data)
    except _PARSE_ERRORS:
        return _plan_unparseable(envelope_text(data), scope)
    if events is None:
        return _plan_unparseable(envelope_text(data), scope, raw)
    return _plan_events(events, scope, anonymize, lambda kept: _events_envelope(raw, kept, scope))


def plan_event_batch(data: bytes, scope: Scope, anonymize: bool) -> Plan:
    """`inbound.events`: `{"received_at": ..., "events": [...]}` from the receive stage."""
    batch = json.loads(data)
    events = [event_from_dict(item) for item in batch.get("events", [])]

    def encode(kept: list[Event]) -> bytes:
        return dumps({**batch, "events": [e.to_dict() for e in kept]})

    return _plan_events(events, scope, anonymize, encode)


def plan_media_job(data: bytes, scope: Scope) -> Plan:
    """`inbound.media`: one message's media retry. Dropped in both modes: an anonymized row
    keeps no media."""
    job = json.loads(data)
    if job.get("tenant") != scope.tenant:
        return Plan()
    message = InboundMessage.from_dict(job["message"])
    if not scope.matcher.message_matches(message):
        return Plan()
    return Plan(action="delete", matched=[job])


def plan_send(data: bytes, scope: Scope) -> Plan:
    """`outbound.send` and its dead letters: one outbox row each."""
    item = json.loads(data)["message"]
    if item.get("tenant") != scope.tenant:
        return Plan()
    if int(item.get("row_id", -1)) in scope.outbound_ids or scope.matcher.matches(
            item.get("recipient")):
        return Plan(action="delete", matched=[item])
    return Plan()


def plan_result(data: bytes, scope: Scope) -> Plan:
    """`outbound.results`: a send result on its way to an outbox row of the contact."""
    item = json.loads(data)
    if item.get("tenant") == scope.tenant and int(item.get("row_id", -1)) in scope.outbound_ids:
        return Plan(action="delete", matched=[item])
    return Plan()


def base_queue(name: str) -> str:
    while name.endswith(".dlq"):
        name = name[: -len(".dlq")]
    return name


def plan_queue_message(name: str, data: bytes, scope: Scope, anonymize: bool) -> Plan | None:
    """The plan for a message of queue `name` (or its dead-letter queue); None for a queue
    this module does not know (reported as not scanned)."""
    kind = base_queue(name)
    if kind == envelopes.INBOUND_RAW:
        return plan_raw(data, scope, anonymize)
    if kind == envelopes.INBOUND_EVENTS:
        return plan_event_batch(data, scope, anonymize)
    if kind == envelopes.INBOUND_MEDIA:
        return plan_media_job(data, scope)
    if kind == envelopes.OUTBOUND_SEND:
        return plan_send(data, scope)
    if kind == envelopes.OUTBOUND_RESULTS:
        return plan_result(data, scope)
    return None


def _note_queued(name: str, data: bytes, scope: Scope) -> None:
    """Look at a queued event list before planning: the contact's messages still queued (their
    receipts, queued next to them, are the contact's too) and the media keys everyone else's
    queued messages will need."""
    kind = base_queue(name)
    events: list[Event] | None = None
    try:
        if kind == envelopes.INBOUND_RAW:
            events = _raw_events(data)[1]
        elif kind == envelopes.INBOUND_EVENTS:
            events = [event_from_dict(i) for i in json.loads(data).get("events", [])]
    except _PARSE_ERRORS:
        return
    for event in events or []:
        if not isinstance(event, InboundMessage):
            continue
        if scope.owns(event) and scope.matcher.message_matches(event):
            scope.refs.add((event.channel_key, event.provider_message_id))
        elif event.media is not None and event.media.key:
            scope.others_media.add(event.media.key)


async def scan_queues(queues: Iterable[Queue], scope: Scope, anonymize: bool
                      ) -> tuple[list[QueueFinding], list[str]]:
    """Every queued message of the contact, with its plan; and the queues that could not be
    scanned. A message is seen once even when two queue objects list it (a DLQ that is also
    a queue of its own)."""
    seen: set[str] = set()
    listed: list[tuple[Queue, ReceivedMessage, str]] = []
    skipped: list[str] = []
    for queue in queues:
        if not isinstance(queue, ScannableQueue):
            skipped.append(queue.spec.name)
            continue
        for message in await queue.iter_all(limit=SCAN_LIMIT):
            if message.message_id in seen:
                continue
            seen.add(message.message_id)
            listed.append((queue, message, message.attributes.get("queue", queue.spec.name)))
    for _, message, name in listed:
        _note_queued(name, message.body, scope)
    findings: list[QueueFinding] = []
    for queue, message, name in listed:
        try:
            plan = plan_queue_message(name, message.body, scope, anonymize)
        except _PARSE_ERRORS:
            continue  # malformed: the stage that reads it will park or dead-letter it
        if plan is None:
            if name not in skipped:
                skipped.append(name)
        elif plan.action != "keep":
            findings.append(QueueFinding(queue, message, plan))
    return findings, skipped


async def apply_queue_findings(findings: list[QueueFinding],
                               target_for: Callable[[Queue, str], Queue]) -> dict[str, int]:
    """Rewrite or delete. The remainder is sent BEFORE the original is deleted: a crash in
    between leaves a duplicate (every consumer is idempotent), never a lost event."""
    counts = {"deleted": 0, "rewritten": 0, "in_flight": 0}
    for finding in findings:
        message, plan = finding.message, finding.plan
        if plan.action == "rewrite" and plan.body is not None:
            name = message.attributes.get("queue", finding.queue.spec.name)
            await target_for(finding.queue, name).send(plan.body)
        if await finding.queue.delete([message.message_id]):
            counts["rewritten" if plan.action == "rewrite" else "deleted"] += 1
            if message.attributes.get("state") == "in_flight":
                counts["in_flight"] += 1
    return counts


# -- parked payloads ---------------------------------------------------------------------------

def plan_parked(stage: str, payload: str, scope: Scope, anonymize: bool) -> Plan:
    """A parked item: `write` holds a JSON list of events, `receive` a raw-queue envelope."""
    if stage == "write":
        try:
            events = [event_from_dict(item) for item in json.loads(payload)]
        except _PARSE_ERRORS:
            return _plan_unparseable(payload, scope)
        return _plan_events(events, scope, anonymize,
                            lambda kept: dumps([e.to_dict() for e in kept]))
    data = envelope_bytes(payload)
    plan = plan_raw(data, scope, anonymize)
    if plan.action == "rewrite" and plan.body is not None:
        plan.body = envelope_text(plan.body).encode()
    return plan


def parked_remainder(plan: Plan) -> str:
    assert plan.body is not None
    return plan.body.decode("utf-8")


def queue_map_targets(queues: Mapping[str, Queue],
                      dead_letter: Callable[[str], Queue] | None) -> Callable[[Queue, str], Queue]:
    """Where a remainder goes: back to the queue the original sat in. A dead letter's remainder
    stays a dead letter when a queue for the DLQ name can be had, else it is given another try
    on the live queue."""

    def target(queue: Queue, name: str) -> Queue:
        if name == queue.spec.name:
            return queue
        if name in queues:
            return queues[name]
        if dead_letter is not None:
            return dead_letter(name)
        return queue

    return target
