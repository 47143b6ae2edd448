"""The admin HTTP API under `/admin/v1/...` (an admin key: `wacloud apikey create --admin`) and
`GET /openapi.json`.

Thin: authenticate, validate with the models of `wacloud.admin.models`, call
`wacloud.admin.queries` or `wacloud.admin.operations` off the event loop, answer JSON. Every refusal
is a JSON `{"error": ...}`: 401 without a valid key, 403 for a key that is not an admin key,
404 for what does not exist, 409 for a conflict, 422 for a body or query the models refuse;
a database that cannot be reached is 503. Keys are only read from the `Authorization` header.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from wacloud.adapters.db.errors import is_database_unavailable
from wacloud.adapters.db.reachability import DatabaseUnreachable
from wacloud.adapters.db.registry.store import Registry, RegistryError
from wacloud.adapters.db.tenant.views import MessageFilter
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.queue.base import Queue
from wacloud.admin import models as m
from wacloud.admin import queries
from wacloud.admin.openapi import ADMIN_PREFIX, Operation, build_document
from wacloud.admin.operations import (
    add_channel,
    add_tenant,
    check_channel_token,
    discard_dead_letters,
    discard_parked,
    replay_parked,
    replay_queue_dead_letters,
)
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain import validation
from wacloud.domain.model import Provider
from wacloud.hosting.api import MAX_ROW_ID, BodyError, authenticate, error, read_json_body
from wacloud.stages.envelopes import INBOUND_RAW

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024
SOURCES = ("messages", "outbound")


@dataclass
class AdminContext:
    """What the admin API works on: the gateway's registry, broker and queues."""

    registry: Registry
    broker: CredentialsBroker
    queues: dict[str, Queue]  # every queue, by name (queue statistics)
    dead_letter_sources: dict[str, Queue]  # the queues whose dead letters an operator sees
    data_dir: Path
    tenants_dir: Path
    http: ProviderClient
    allow_http: bool = False  # plain http API base URLs (WACLOUD_DEV_ALLOW_LOCAL_URLS)
    token_check_timeout: float = 10.0


class Refused(Exception):
    """A request refused with an HTTP status and a reason (answered as JSON)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _first_error(exc: ValidationError) -> str:
    problems = []
    for item in exc.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"] if part != "__root__")
        problems.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(problems)


def _has_nul(data: Any) -> bool:
    if isinstance(data, str):
        return "\x00" in data
    if isinstance(data, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in data.items())
    if isinstance(data, list):
        return any(_has_nul(item) for item in data)
    return False


def parse(model: type[M], data: Any) -> M:
    # PostgreSQL refuses NUL characters in text: refused here, not as a database error.
    if _has_nul(data):
        raise Refused(422, "text must not contain NUL characters")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Refused(422, _first_error(exc)) from None


async def body(request: Request, model: type[M]) -> M:
    try:
        data = await read_json_body(request, MAX_BODY_BYTES)
    except BodyError as exc:
        raise Refused(exc.status, str(exc)) from None
    return parse(model, data)


def query(request: Request, model: type[M]) -> M:
    params = request.query_params
    data = {key: params.get(key) for key in params}
    return parse(model, data)


def row_id(request: Request, name: str = "id") -> int:
    """An integer path parameter; one no database could hold names nothing (404)."""
    value: int = request.path_params[name]
    if value > MAX_ROW_ID:
        raise Refused(404, f"no such {name}")
    return value


def _registry_refusal(exc: RegistryError) -> Refused:
    text = str(exc)
    return Refused(404 if text.startswith(("unknown", "no ")) else 409, text)


def admin_operations(ctx: AdminContext) -> list[Operation]:
    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def tenant_known(slug: str) -> None:
        if ctx.broker.has_tenant(slug) or (await run(ctx.broker.refresh)
                                           and ctx.broker.has_tenant(slug)):
            return
        raise Refused(404, f"unknown tenant {slug!r}")

    async def changed() -> None:
        # This process's view of the registry (keys, channels, pauses) follows at once.
        await run(ctx.broker.refresh, force=True)

    # -- tenants and channels ----------------------------------------------------------

    async def tenants(_: Request) -> Any:
        return await run(queries.list_tenants, ctx.registry)

    async def tenant_create(request: Request) -> Any:
        data = await body(request, m.TenantCreate)
        try:
            tenant = await run(add_tenant, ctx.registry, ctx.tenants_dir, data.slug,
                               data.db_url, db_url_hint="db_url")
        except validation.InvalidValue as exc:
            raise Refused(422, str(exc)) from None
        except RegistryError as exc:
            raise Refused(409, str(exc)) from None
        except DatabaseUnreachable as exc:
            raise Refused(422, f"{exc}; tenant {data.slug} was not added") from None
        await changed()
        return {"id": tenant.id, "slug": tenant.slug, "own_db": tenant.db_url is not None,
                "retention_days": tenant.retention_days, "channels": 0}

    async def channels(request: Request) -> Any:
        wanted = query(request, m.ChannelQuery)
        if wanted.tenant is not None:
            await tenant_known(wanted.tenant)
        return await run(queries.list_channels, ctx.registry, wanted.tenant)

    async def channel_create(request: Request) -> Any:
        data = (await body(request, m.ChannelCreate)).root
        values = data.registry_values()
        values["provider"] = Provider(data.provider)
        try:
            channel = await run(add_channel, ctx.registry, values, allow_http=ctx.allow_http)
        except validation.InvalidValue as exc:
            raise Refused(422, str(exc)) from None
        except RegistryError as exc:
            text = str(exc)
            status = 404 if text.startswith("unknown tenant") else (
                409 if "already exists" in text else 422)
            raise Refused(status, text) from None
        await changed()
        return queries.channel_view(channel)

    async def channel_id(request: Request) -> int:
        number = row_id(request)
        try:
            await run(ctx.registry.channel_by_id, number)
        except RegistryError as exc:
            raise _registry_refusal(exc) from None
        return number

    async def channel(request: Request) -> Any:
        return await run(queries.get_channel, ctx.registry, await channel_id(request))

    async def pause(request: Request) -> Any:
        number = await channel_id(request)
        data = await body(request, m.PauseRequest)
        await run(ctx.registry.set_channel_pause, number, True, data.reason)
        await changed()
        return await run(queries.get_channel, ctx.registry, number)

    async def resume(request: Request) -> Any:
        number = await channel_id(request)
        await run(ctx.registry.set_channel_pause, number, False, None)
        await changed()
        return await run(queries.get_channel, ctx.registry, number)

    async def replace_token(request: Request) -> Any:
        number = await channel_id(request)
        data = await body(request, m.TokenReplace)
        try:
            token = validation.token(data.token)
        except validation.InvalidValue as exc:
            raise Refused(422, str(exc)) from None
        try:
            was_paused = await run(ctx.registry.set_channel_token, number, token)
        except RegistryError as exc:
            raise _registry_refusal(exc) from None
        await changed()
        return {"id": number, "token_replaced": True, "paused": False, "was_paused": was_paused}

    async def test_token(request: Request) -> Any:
        number = await channel_id(request)
        found = await run(ctx.registry.channel_by_id, number)
        check = await check_channel_token(ctx.http, found, ctx.token_check_timeout)
        return check.to_dict()

    async def health(request: Request) -> Any:
        wanted = query(request, m.ChannelQuery)
        if wanted.tenant is not None:
            await tenant_known(wanted.tenant)
        return await run(queries.channel_health, ctx.registry, ctx.broker, wanted.tenant)

    # -- messages ------------------------------------------------------------------------

    async def messages(request: Request) -> Any:
        slug = request.path_params["tenant"]
        await tenant_known(slug)
        wanted = query(request, m.MessageQuery)
        try:
            filters = MessageFilter(channel=wanted.channel, contact=wanted.contact,
                                    direction=wanted.direction, status=wanted.status,
                                    since=_utc(wanted.since), until=_utc(wanted.until))
        except OverflowError:
            raise Refused(422, "since / until: a time out of range") from None
        try:
            return await run(queries.find_messages, ctx.broker, slug, filters, wanted.limit,
                             wanted.cursor)
        except ValueError as exc:
            raise Refused(422, str(exc)) from None

    async def notices(request: Request) -> Any:
        slug = request.path_params["tenant"]
        await tenant_known(slug)
        wanted = query(request, m.NoticeQuery)
        return await run(queries.tenant_notices, ctx.broker, slug, wanted.limit)

    async def message(request: Request) -> Any:
        slug, source = request.path_params["tenant"], request.path_params["source"]
        await tenant_known(slug)
        if source not in SOURCES:
            raise Refused(404, "a message's source is `messages` (inbound) or `outbound`")
        found = await run(queries.get_message, ctx.broker, slug, source, row_id(request))
        if found is None:
            raise Refused(404, "no such message")
        return found

    # -- queues, dead letters, parked items ------------------------------------------------

    async def queue_list(_: Request) -> Any:
        return await queries.queue_stats(ctx.queues)

    def source_queue(name: str) -> Queue:
        queue = ctx.dead_letter_sources.get(name.removesuffix(".dlq"))
        if queue is None:
            raise Refused(404, f"unknown queue {name!r}; one of: "
                          f"{', '.join(ctx.dead_letter_sources)}")
        return queue

    async def dead_letters(request: Request) -> Any:
        wanted = query(request, m.DeadLetterQuery)
        name = None
        if wanted.queue is not None:
            name = source_queue(wanted.queue).spec.name
        return await queries.list_dead_letters(ctx.dead_letter_sources, name)

    async def dead_letter(request: Request) -> Any:
        name = source_queue(request.path_params["queue"]).spec.name
        found = await queries.get_dead_letter(ctx.dead_letter_sources, name,
                                              request.path_params["id"])
        if found is None:
            raise Refused(404, "no such dead letter")
        return found

    def chosen(selection: m.Selection) -> list[str] | None:
        if bool(selection.ids) == selection.all:
            raise Refused(422, "give `ids` or `all: true`")
        return None if selection.all else list(selection.ids or [])

    async def dead_replay(request: Request) -> Any:
        queue = source_queue(request.path_params["queue"])
        ids = chosen(await body(request, m.Selection))
        replayed = await replay_queue_dead_letters(ctx.broker, queue.spec.name, queue, ids)
        return {"queue": queue.spec.name, "replayed": replayed}

    async def dead_discard(request: Request) -> Any:
        queue = source_queue(request.path_params["queue"])
        data = await body(request, m.Discard)
        record = await discard_dead_letters(ctx.data_dir, queue.spec.name, queue,
                                            chosen(data), data.reason)
        return {"queue": queue.spec.name, "discarded": record["ids"],
                "reason": record["reason"]}

    async def parked(request: Request) -> Any:
        wanted = query(request, m.ParkedQuery)
        return await run(queries.list_parked, ctx.registry, wanted.include_replayed)

    async def parked_item(request: Request) -> Any:
        try:
            item = await run(ctx.registry.parked_item, row_id(request))
        except RegistryError as exc:
            raise _registry_refusal(exc) from None
        return queries.parked_detail(item)

    def parked_ids(ids: list[str] | None) -> list[int] | None:
        if ids is None:
            return None
        if not all(i.isascii() and i.isdigit() for i in ids):
            raise Refused(422, "parked item ids are numbers")
        return [int(i) for i in ids]

    async def parked_replay(request: Request) -> Any:
        ids = parked_ids(chosen(await body(request, m.Selection)))
        if ids is None:
            items = await run(ctx.registry.parked_items)
        else:
            too_big = [i for i in ids if i > MAX_ROW_ID]
            if too_big:
                raise Refused(404, f"no parked item {too_big[0]}")
            try:
                items = [await run(ctx.registry.parked_item, i) for i in ids]
            except RegistryError as exc:
                raise _registry_refusal(exc) from None
        try:
            replayed = await replay_parked(ctx.registry, ctx.queues[INBOUND_RAW], items)
        except ValueError as exc:
            raise Refused(409, str(exc)) from None
        return {"replayed": replayed}

    async def parked_discard(request: Request) -> Any:
        data = await body(request, m.Discard)
        ids = parked_ids(chosen(data))
        if ids is None:
            ids = [item.id for item in await run(ctx.registry.parked_items,
                                                 include_replayed=True, limit=100_000)]
        record = await run(discard_parked, ctx.registry, ctx.data_dir,
                           [i for i in ids if i <= MAX_ROW_ID], data.reason)
        return {"discarded": record["ids"], "reason": record["reason"]}

    channel_doc = {"id": "The channel's id (as `wacloud channel list` shows it)."}
    tenant_doc = {"tenant": "The tenant's slug."}
    queue_doc = {"queue": "A queue name (inbound.raw, inbound.events, inbound.media, "
                 "outbound.send, outbound.results); NAME.dlq is accepted too."}
    return [
        Operation("GET", "/tenants", tenants, "List tenants", "tenants", m.Tenant, many=True),
        Operation("POST", "/tenants", tenant_create, "Add a tenant", "tenants", m.Tenant,
                  status=201, body=m.TenantCreate, errors=(400, 401, 403, 409, 413, 422)),
        Operation("GET", "/channels", channels, "List channels (never their secrets)",
                  "channels", m.Channel, many=True, query=m.ChannelQuery),
        Operation("POST", "/channels", channel_create, "Add a channel (Meta, Whapi or Chakra)",
                  "channels", m.Channel, status=201, body=m.ChannelCreate,
                  errors=(400, 401, 403, 404, 409, 413, 422)),
        Operation("GET", "/channels/health", health, "Channel health: last webhook, sends "
                  "and errors of the last hour, rate-limit hits, pause", "channels",
                  m.ChannelHealth, many=True, query=m.ChannelQuery),
        Operation("GET", "/channels/{id:int}", channel, "One channel", "channels", m.Channel,
                  path_docs=channel_doc),
        Operation("POST", "/channels/{id:int}/pause", pause, "Pause a channel (its messages "
                  "wait in the outbox)", "channels", m.Channel, body=m.PauseRequest,
                  path_docs=channel_doc),
        Operation("POST", "/channels/{id:int}/resume", resume, "Resume a paused channel",
                  "channels", m.Channel, path_docs=channel_doc),
        Operation("PUT", "/channels/{id:int}/token", replace_token, "Replace a channel's "
                  "token (and resume it)", "channels", m.TokenReplaced, body=m.TokenReplace,
                  path_docs=channel_doc),
        Operation("POST", "/channels/{id:int}/token/test", test_token, "Test the channel's "
                  "token with one cheap provider call", "channels", m.TokenCheck,
                  path_docs=channel_doc, description=(
                      "Meta: GET /{version}/{phone_number_id}; Whapi: GET /health (the "
                      "session must be AUTH); Chakra: GET /v1/health. Answers 200 with "
                      "`ok` false when the provider refuses the token.")),
        Operation("GET", "/tenants/{tenant}/messages", messages, "Search a tenant's "
                  "messages, newest first", "messages", m.MessagePage, query=m.MessageQuery,
                  path_docs=tenant_doc),
        Operation("GET", "/tenants/{tenant}/notices", notices, "A tenant's notices: "
                  "webhook-level errors, account and template updates, oldest first",
                  "messages", m.Notice, many=True, query=m.NoticeQuery, path_docs=tenant_doc),
        Operation("GET", "/tenants/{tenant}/messages/{source}/{id:int}", message,
                  "One message with its status timeline, attempts and errors", "messages",
                  m.MessageDetail, path_docs={**tenant_doc, "source": (
                      "`outbound` (the outbox) or `messages` (inbound and echoes): the "
                      "`source` field of a search result."), "id": "The row id."}),
        Operation("GET", "/queues", queue_list, "Queues: depth, in flight, age of the "
                  "oldest message, dead letters", "queues", m.QueueStats, many=True),
        Operation("GET", "/dead-letters", dead_letters, "Dead letters of every queue (never "
                  "their bodies)", "dead letters", m.DeadLetter, many=True,
                  query=m.DeadLetterQuery),
        Operation("GET", "/dead-letters/{queue}/{id}", dead_letter, "One dead letter",
                  "dead letters", m.DeadLetter, path_docs=queue_doc),
        Operation("POST", "/dead-letters/{queue}/replay", dead_replay, "Put dead letters "
                  "back on their queue (outbound rows go back to queued)", "dead letters",
                  m.Replayed, body=m.Selection, path_docs=queue_doc),
        Operation("POST", "/dead-letters/{queue}/discard", dead_discard, "Delete dead "
                  "letters for good, with a reason", "dead letters", m.Discarded,
                  body=m.Discard, path_docs=queue_doc),
        Operation("GET", "/parked", parked, "Parked payloads (unroutable or unparseable)",
                  "parked", m.ParkedItem, many=True, query=m.ParkedQuery),
        Operation("GET", "/parked/{id:int}", parked_item, "One parked item with its payload",
                  "parked", m.ParkedDetail),
        Operation("POST", "/parked/replay", parked_replay, "Send parked items back through "
                  "the pipeline", "parked", m.Replayed, body=m.Selection),
        Operation("POST", "/parked/discard", parked_discard, "Delete parked items for good, "
                  "with a reason", "parked", m.Discarded, body=m.Discard),
    ]


def _utc(value: datetime | None) -> datetime | None:
    """In UTC (naive means UTC); OverflowError for a time UTC cannot hold."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _endpoint(ctx: AdminContext, op: Operation) -> Callable[[Request], Awaitable[Response]]:
    assert op.handler is not None
    handler = op.handler

    async def endpoint(request: Request) -> Response:
        key = await authenticate(request, ctx.broker)
        if key is None:
            return error(401, "an admin key is required (Authorization: Bearer KEY)")
        if not key.is_admin:
            return error(403, "this API needs an admin key (wacloud apikey create --admin)")
        try:
            answer = await handler(request)
        except Refused as exc:
            return error(exc.status, str(exc))
        except Exception as exc:
            if is_database_unavailable(exc):
                log.warning("admin %s %s: a database is unavailable (%s)", op.method,
                            op.path, type(exc).__name__)
                return error(503, "a database is unavailable; try again later")
            raise
        if op.method != "GET":
            # Who changed what: the key's id and prefix (shown in listings, not secret).
            log.info("admin %s %s by key %d (%s...)", op.method, request.url.path, key.id,
                     key.prefix)
        if isinstance(answer, Response):
            return answer
        return JSONResponse(answer, status_code=op.status)

    return endpoint


async def _not_found(_: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    text = "method not allowed" if status == 405 else "no such admin path"
    return error(status, f"{text} (see /openapi.json)")


async def _server_error(_: Request, exc: Exception) -> Response:
    log.error("admin API failure: %s", type(exc).__name__, exc_info=exc)
    return error(500, "internal error (see the gateway's log)")


def admin_routes(ctx: AdminContext) -> list[BaseRoute]:
    """`/admin/v1/...` (a sub-application, whose 404 and 405 answer JSON too) and
    `/openapi.json`."""
    operations = admin_operations(ctx)
    document = build_document(operations)
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    routes = []
    for path, ops in by_path.items():
        table = {op.method: _endpoint(ctx, op) for op in ops}

        async def dispatch(request: Request,
                           table: dict[str, Callable[[Request], Awaitable[Response]]] = table
                           ) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await table[method](request)

        routes.append(Route(path, dispatch, methods=list(table)))
    admin = Starlette(routes=routes, exception_handlers={
        404: _not_found, 405: _not_found, Exception: _server_error})

    async def openapi(_: Request) -> Response:
        return JSONResponse(document)

    mount = Mount(ADMIN_PREFIX, app=admin)
    # Starlette's mount pattern (`.*`) stops at a newline: a path with an encoded one (%0A)
    # fell through to the outer app's plain-text 404. Every path under the prefix is the
    # admin API's, answered in JSON.
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return [Route("/openapi.json", openapi, methods=["GET"]), mount]
