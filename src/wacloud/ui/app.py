"""The web dashboard at `/ui`: server-rendered pages (Jinja2), plain HTML forms, no script.

Log in with an admin key (everything) or a tenant key (that tenant's overview, messages,
media and channels, read-only). The key is posted once in a form and never put in a URL or a
cookie: the session (`wacloud.ui.sessions`) keeps its hash. Every form that changes something
carries the session's CSRF token and must come from this origin.

The pages read through `wacloud.admin.queries` and act through `wacloud.admin.operations`, the
functions the admin API uses; blocking calls run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from wacloud.adapters.db.errors import is_database_unavailable
from wacloud.adapters.db.registry.api_keys import hash_key
from wacloud.adapters.db.registry.store import RegistryError
from wacloud.adapters.db.tenant.views import MessageFilter
from wacloud.adapters.media.base import MediaStore
from wacloud.admin import models as m
from wacloud.admin import queries
from wacloud.admin.api import AdminContext
from wacloud.admin.operations import (
    add_channel,
    discard_dead_letters,
    discard_parked,
    replay_parked,
    replay_queue_dead_letters,
)
from wacloud.domain import validation
from wacloud.domain.model import Provider
from wacloud.stages.envelopes import INBOUND_RAW
from wacloud.ui import sessions as s
from wacloud.ui.charts import rate_chart

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 64 * 1024
# Shown inline; anything else (SVG and HTML included, which could carry script) downloads.
INLINE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class UiContext:
    admin: AdminContext
    media: MediaStore
    sessions: s.SessionStore


class Denied(Exception):
    """A page refused: the HTTP status and why (shown on an error page)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _when(value: Any) -> str:
    """An ISO time (or datetime) as `YYYY-MM-DD HH:MM:SS` UTC, for tables."""
    if value is None or value == "":
        return ""
    when: datetime
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


ENV = Environment(loader=PackageLoader("wacloud.ui", "templates"),
                  autoescape=select_autoescape(default=True, default_for_string=True))
ENV.filters["when"] = _when
ENV.filters["age"] = _age


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (what the pages' forms post), at most MAX_FORM_BYTES."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Denied(413, "the form is too large")
    except ClientDisconnect:
        raise Denied(400, "the client went away") from None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise Denied(400, "the form could not be read") from None
    return dict(pairs)


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    if any("\x00" in str(v) for v in data.values()):
        raise Denied(422, "text must not contain NUL characters")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        item = exc.errors()[0]
        where = ".".join(str(p) for p in item["loc"])
        raise Denied(422, f"{where}: {item['msg']}" if where else item["msg"]) from None


def ui_routes(ctx: UiContext) -> list[Route]:
    admin = ctx.admin
    registry, broker = admin.registry, admin.broker

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def render(request: Request, name: str, session: s.Session | None, status: int = 200,
               **values: Any) -> Response:
        flash = list(session.flash) if session else []
        if session:
            session.flash.clear()
        html = ENV.get_template(name).render(session=session, flash=flash,
                                             path=request.url.path, **values)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def redirect(url: str) -> Response:
        return RedirectResponse(url, status_code=303, headers=HEADERS)

    async def current(request: Request) -> s.Session | None:
        session = ctx.sessions.get(request.cookies.get(s.COOKIE))
        if session is None:
            return None
        key = broker.api_key_by_hash(session.key_hash)
        if key is None:  # revoked since the login (or the registry changed under it)
            await run(broker.refresh)
            key = broker.api_key_by_hash(session.key_hash)
        if key is None or key.tenant != session.tenant or (session.is_admin
                                                           and not key.is_admin):
            ctx.sessions.drop(session.sid)
            return None
        return session

    Handler = Callable[[Request, s.Session], Awaitable[Response]]

    def page(handler: Handler, *, admin_only: bool = False) -> Callable[[Request],
                                                                        Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await current(request)
            if session is None:
                if request.method == "GET":
                    return redirect("/ui/login")
                return render(request, "error.html", None, 401,
                              message="Your session has ended: log in again.")
            try:
                if request.method == "POST":
                    form = await _form(request)
                    if not s.same_origin(request) or not s.csrf_ok(session, form.get("csrf")):
                        raise Denied(403, "This form did not come from this dashboard "
                                          "(CSRF check failed): reload the page and retry.")
                    request.state.form = form
                if admin_only and not session.is_admin:
                    raise Denied(403, "This page needs an admin key.")
                return await handler(request, session)
            except Denied as exc:
                return render(request, "error.html", session, exc.status, message=str(exc))
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                log.warning("dashboard %s: a database is unavailable (%s)", request.url.path,
                            type(exc).__name__)
                return render(request, "error.html", session, 503,
                              message="A database is unavailable; try again later.")

        return endpoint

    def form_of(request: Request) -> dict[str, str]:
        form: dict[str, str] = request.state.form
        return form

    def tenant_allowed(session: s.Session, slug: str) -> None:
        # Another tenant's rows are "not found", as in the tenant API: existence not revealed.
        if (session.tenant is not None and slug != session.tenant) or not broker.has_tenant(slug):
            raise Denied(404, f"No tenant {slug!r} here.")

    def scope(session: s.Session) -> list[str]:
        return [session.tenant] if session.tenant is not None else sorted(broker.tenant_slugs())

    # -- login and logout ------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        if await current(request) is not None:
            return redirect("/ui")
        return render(request, "login.html", None)

    async def login(request: Request) -> Response:
        try:
            form = await _form(request)
        except Denied as exc:
            return render(request, "login.html", None, exc.status, error=str(exc))
        if not s.same_origin(request):
            return render(request, "login.html", None, 403,
                          error="This form did not come from this dashboard.")
        presented = form.get("key", "").strip()
        found = broker.api_key(presented) if presented else None
        if found is None and presented and await run(broker.refresh_after_miss):
            found = broker.api_key(presented)
        if found is None or not (found.is_admin or found.tenant):
            return render(request, "login.html", None, 401,
                          error="That key is not an active admin or tenant key.")
        session = ctx.sessions.create(hash_key(presented), found.id, found.tenant)
        log.info("dashboard login by key %d (%s...)", found.id, found.prefix)
        response = redirect("/ui")
        s.set_cookie(response, request, session, ctx.sessions.max_age_s)
        return response

    async def logout(request: Request, session: s.Session) -> Response:
        ctx.sessions.drop(session.sid)
        response = redirect("/ui/login")
        s.clear_cookie(response, request)
        return response

    # -- overview ------------------------------------------------------------------------------

    async def overview(request: Request, session: s.Session) -> Response:
        tenants = scope(session)
        traffic = await run(queries.traffic, broker, tenants)
        health = await run(queries.channel_health, registry, broker, session.tenant)
        by_key = {(c["tenant"], c["channel"]): c for c in traffic["channels"]}
        rows = []
        for channel in health:
            flow = by_key.get((channel["tenant"], channel["key"]),
                              {"in": 0, "out": 0, "failed": 0})
            tried = flow["out"] + flow["failed"]
            rows.append({**channel, "in": flow["in"], "out": flow["out"],
                         "failed": flow["failed"],
                         "error_rate": flow["failed"] / tried if tried else None})
        out_total = sum(traffic["out"])
        failed_total = sum(r["failed"] for r in rows)
        values: dict[str, Any] = {
            "chart": rate_chart(traffic["in"], traffic["out"], traffic["minutes"]),
            "traffic": traffic, "channels": rows,
            "paused": [r for r in rows if r["paused"]],
            "error_rate": failed_total / (out_total + failed_total)
            if out_total + failed_total else None,
            "queues": None, "parked": None, "dead": None}
        if session.is_admin:
            values["queues"] = [q for q in await queries.queue_stats(admin.queues)
                                if not q["name"].endswith(".dlq")]
            values["parked"] = len(await run(queries.list_parked, registry))
            values["dead"] = sum(q["dead"] for q in values["queues"])
        return render(request, "overview.html", session, **values)

    # -- messages -------------------------------------------------------------------------------

    async def messages(request: Request, session: s.Session) -> Response:
        params = {k: v for k, v in request.query_params.items() if v != ""}
        tenants = scope(session)
        tenant = params.pop("tenant", None) or (tenants[0] if tenants else None)
        if tenant is None:
            return render(request, "messages.html", session, tenants=tenants, tenant=None,
                          params=params, page=None)
        tenant_allowed(session, tenant)
        wanted = _parse(m.MessageQuery, params)
        try:
            filters = MessageFilter(channel=wanted.channel, contact=wanted.contact,
                                    direction=wanted.direction, status=wanted.status,
                                    since=_utc(wanted.since), until=_utc(wanted.until))
            found = await run(queries.find_messages, broker, tenant, filters, wanted.limit,
                              wanted.cursor)
        except (ValueError, OverflowError) as exc:
            raise Denied(422, str(exc)) from None
        next_url = None
        if found["next_cursor"]:
            query = {**params, "tenant": tenant, "cursor": found["next_cursor"]}
            next_url = "/ui/messages?" + urlencode(query)
        return render(request, "messages.html", session, tenants=tenants, tenant=tenant,
                      params=params, page=found, next_url=next_url)

    async def message(request: Request, session: s.Session) -> Response:
        tenant, source = request.path_params["tenant"], request.path_params["source"]
        tenant_allowed(session, tenant)
        if source not in ("messages", "outbound"):
            raise Denied(404, "No such message.")
        found = await run(queries.get_message, broker, tenant, source, _row(request))
        if found is None:
            raise Denied(404, "No such message.")
        media = found.get("media")
        preview = bool(media and media.get("status") == "stored"
                       and media.get("mime_type") in INLINE_IMAGES)
        return render(request, "message.html", session, tenant=tenant, message=found,
                      preview=preview)

    async def media(request: Request, session: s.Session) -> Response:
        tenant = request.path_params["tenant"]
        tenant_allowed(session, tenant)
        found = await run(queries.get_message, broker, tenant, "messages", _row(request))
        item = (found or {}).get("media") or {}
        if not item.get("key") or item.get("status") != "stored":
            raise Denied(404, "No stored media for this message.")
        key = item["key"]
        if not await ctx.media.exists(key):
            raise Denied(404, "The media file is gone from the media store.")
        mime = item.get("mime_type") or ""
        headers = dict(HEADERS)
        if mime in INLINE_IMAGES:
            headers["Content-Disposition"] = "inline"
        else:
            ext = mimetypes.guess_extension(mime) or ".bin"
            headers["Content-Disposition"] = f'attachment; filename="media-{_row(request)}{ext}"'
            mime = "application/octet-stream"
        if item.get("size"):
            headers["Content-Length"] = str(item["size"])
        return StreamingResponse(ctx.media.open(key), media_type=mime, headers=headers)

    # -- parked items and dead letters -------------------------------------------------------

    async def parked(request: Request, session: s.Session) -> Response:
        everything = request.query_params.get("all") == "1"
        items = await run(queries.list_parked, registry, everything)
        return render(request, "parked.html", session, items=items, everything=everything)

    async def parked_item(request: Request, session: s.Session) -> Response:
        try:
            item = await run(registry.parked_item, _row(request))
        except RegistryError:
            raise Denied(404, "No such parked item.") from None
        return render(request, "parked_item.html", session, item=queries.parked_detail(item))

    async def parked_replay(request: Request, session: s.Session) -> Response:
        try:
            item = await run(registry.parked_item, _row(request))
            done = await replay_parked(registry, admin.queues[INBOUND_RAW], [item])
        except RegistryError:
            raise Denied(404, "No such parked item.") from None
        except ValueError as exc:
            raise Denied(409, str(exc)) from None
        log.info("dashboard: parked item %s replayed by key %d", done, session.key_id)
        session.flash.append(("ok", f"Parked item {done[0]} sent back through the pipeline."))
        return redirect("/ui/parked")

    def reason_of(request: Request) -> str:
        reason = form_of(request).get("reason", "").strip()
        if not reason:
            raise Denied(422, "Give a reason to discard (it is kept in the discard record).")
        return _parse(m.Discard, {"all": True, "reason": reason}).reason  # type: ignore[no-any-return]

    async def parked_discard(request: Request, session: s.Session) -> Response:
        reason = reason_of(request)
        record = await run(discard_parked, registry, admin.data_dir, [_row(request)], reason)
        if not record["ids"]:
            raise Denied(404, "No such parked item.")
        session.flash.append(("ok", f"Parked item {record['ids'][0]} discarded."))
        return redirect("/ui/parked")

    def dead_queue(request: Request) -> Any:
        queue = admin.dead_letter_sources.get(request.path_params["queue"])
        if queue is None:
            raise Denied(404, "No such queue.")
        return queue

    async def dead_letters(request: Request, session: s.Session) -> Response:
        letters = await queries.list_dead_letters(admin.dead_letter_sources)
        return render(request, "dead_letters.html", session, letters=letters)

    async def dead_replay(request: Request, session: s.Session) -> Response:
        queue = dead_queue(request)
        letter = request.path_params["id"]
        done = await replay_queue_dead_letters(broker, queue.spec.name, queue, [letter])
        if not done:
            raise Denied(404, "No such dead letter.")
        session.flash.append(("ok", f"Dead letter {letter} put back on {queue.spec.name}."))
        return redirect("/ui/dead-letters")

    async def dead_discard(request: Request, session: s.Session) -> Response:
        queue = dead_queue(request)
        reason = reason_of(request)
        record = await discard_dead_letters(admin.data_dir, queue.spec.name, queue,
                                            [request.path_params["id"]], reason)
        if not record["ids"]:
            raise Denied(404, "No such dead letter.")
        session.flash.append(("ok", f"Dead letter {record['ids'][0]} discarded."))
        return redirect("/ui/dead-letters")

    # -- tenants and channels -------------------------------------------------------------------

    async def tenants(request: Request, session: s.Session) -> Response:
        return render(request, "tenants.html", session,
                      tenants=await run(queries.list_tenants, registry))

    async def channels(request: Request, session: s.Session) -> Response:
        wanted = request.query_params.get("tenant") or session.tenant
        if wanted is not None:
            tenant_allowed(session, wanted)
        found = await run(queries.list_channels, registry, wanted)
        return render(request, "channels.html", session, channels=found, tenant=wanted,
                      base=_base_url(request))

    async def channel_form(request: Request, session: s.Session) -> Response:
        return render(request, "channel_new.html", session, tenants=scope(session),
                      values={"provider": request.query_params.get("provider", "meta")},
                      error=None)

    async def channel_create(request: Request, session: s.Session) -> Response:
        form = {k: v.strip() for k, v in form_of(request).items() if k != "csrf"}
        provider = form.get("provider", "")
        fields = {"meta": ("phone_number_id", "waba_id", "display_number", "app_secret",
                           "verify_token", "graph_version"),
                  "whapi": ("channel_id", "webhook_secret"),
                  "chakra": ("plugin_id", "phone_number_id", "webhook_secret",
                             "graph_version")}.get(provider, ())
        data: dict[str, Any] = {"provider": provider}
        for name in ("tenant", "token", "api_base_url", "mps", *fields):
            if form.get(name):
                data[name] = form[name]
        data["media_hosts"] = [h for h in form.get("media_hosts", "").split() if h]
        # Secrets the provider is told (not given by it) are made here when left empty.
        generated = "verify_token" if provider == "meta" else "webhook_secret"
        if provider in ("meta", "whapi", "chakra") and not data.get(generated):
            data[generated] = secrets.token_urlsafe(24)
        try:
            parsed = _parse(m.ChannelCreate, data).root
            values = parsed.registry_values()
            values["provider"] = Provider(parsed.provider)
            channel = await run(add_channel, registry, values, allow_http=admin.allow_http)
        except (Denied, validation.InvalidValue, RegistryError) as exc:
            return render(request, "channel_new.html", session, 422, tenants=scope(session),
                          values=form | {"token": "", "app_secret": "",
                                         "webhook_secret": "", "verify_token": ""},
                          error=str(exc))
        await run(broker.refresh, force=True)
        log.info("dashboard: channel %d added by key %d", channel.id, session.key_id)
        view = queries.channel_view(channel)
        return render(request, "channel_created.html", session, channel=view,
                      webhook_url=_base_url(request) + view["webhook_path"],
                      secret_name=generated, secret=data[generated])

    async def channel_pause(request: Request, session: s.Session) -> Response:
        number = _row(request)
        action = request.path_params["action"]
        if action not in ("pause", "resume"):
            raise Denied(404, "Not found.")
        paused = action == "pause"
        try:
            await run(registry.channel_by_id, number)
        except RegistryError:
            raise Denied(404, "No such channel.") from None
        reason = form_of(request).get("reason", "").strip()[:500] or "paused by an operator"
        await run(registry.set_channel_pause, number, paused, reason if paused else None)
        await run(broker.refresh, force=True)
        session.flash.append(("ok", f"Channel {number} {'paused' if paused else 'resumed'}."))
        return redirect("/ui/channels")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name != "style.css":
            return Response("not found", status_code=404)
        body = resources.files("wacloud.ui").joinpath("static", name).read_bytes()
        return Response(body, media_type="text/css",
                        headers={"Cache-Control": "max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

    def admin_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return page(handler, admin_only=True)

    get, post = ["GET"], ["POST"]
    return [
        Route("/ui/login", login_page, methods=get),
        Route("/ui/login", login, methods=post),
        Route("/ui/logout", page(logout), methods=post),
        Route("/ui/static/{name}", static, methods=get),
        Route("/ui", page(overview), methods=get),
        Route("/ui/", page(overview), methods=get),
        Route("/ui/messages", page(messages), methods=get),
        Route("/ui/messages/{tenant}/{source}/{id:int}", page(message), methods=get),
        Route("/ui/media/{tenant}/{id:int}", page(media), methods=get),
        Route("/ui/parked", admin_page(parked), methods=get),
        Route("/ui/parked/{id:int}", admin_page(parked_item), methods=get),
        Route("/ui/parked/{id:int}/replay", admin_page(parked_replay), methods=post),
        Route("/ui/parked/{id:int}/discard", admin_page(parked_discard), methods=post),
        Route("/ui/dead-letters", admin_page(dead_letters), methods=get),
        Route("/ui/dead-letters/{queue}/{id}/replay", admin_page(dead_replay), methods=post),
        Route("/ui/dead-letters/{queue}/{id}/discard", admin_page(dead_discard),
              methods=post),
        Route("/ui/tenants", admin_page(tenants), methods=get),
        Route("/ui/channels", page(channels), methods=get),
        Route("/ui/channels/new", admin_page(channel_form), methods=get),
        Route("/ui/channels", admin_page(channel_create), methods=post),
        Route("/ui/channels/{id:int}/{action:str}", admin_page(channel_pause),
              methods=post),
    ]


def _row(request: Request) -> int:
    value: int = request.path_params["id"]
    if value > 2**63 - 1:
        raise Denied(404, "Not found.")
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _base_url(request: Request) -> str:
    """Where providers reach this gateway, as the browser sees it (a proxy's host and scheme
    when it says so): the start of the webhook URL to paste into Meta or Whapi."""
    scheme = "https" if s.is_https(request) else request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    return f"{scheme}://{host}"
