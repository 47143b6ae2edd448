"""Checks of the values an operator gives us (CLI flags, admin API fields), where they enter.

A slug becomes a file name and a media key prefix, a provider id a routing key and an API base
URL the origin every token is sent to: each is checked once here, and each refusal says the
rule, so the command line and the admin API refuse the same things with the same words. Every
function returns the value as it should be stored or raises `InvalidValue` (a ValueError).
Messages never repeat a secret: a database URL is shown with its password masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from wacloud.domain.model import Provider
from wacloud.security.urlpolicy import normalize_media_hosts

SLUG_RULE = ("lower-case letters, digits, '-' and '_', starting with a letter or digit, "
             "at most 63 characters")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DIGITS = re.compile(r"^[0-9]{1,32}$")
# Whapi channel ids (MANTIS-M72HC) and Chakra plugin ids (UUIDs).
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_GRAPH_VERSION = re.compile(r"^v[0-9]{1,3}\.[0-9]{1,3}$")
_DISPLAY_NUMBER = re.compile(r"^\+?[0-9]{5,20}$")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header value can carry
# Database backends the tenant and registry schemas are migrated and tested on.
DB_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb", "mssql")


class InvalidValue(ValueError):
    """A value refused where it entered; the message names the field and its rule."""


def slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise InvalidValue(f"invalid tenant slug {value!r}: use {SLUG_RULE} "
                           "(e.g. acme or acme-br)")
    return value


def numeric_id(value: str, name: str) -> str:
    """Meta's ids (phone_number_id, WABA id) are digits only."""
    stripped = value.strip()
    if not _DIGITS.fullmatch(stripped):
        raise InvalidValue(f"invalid {name} {value!r}: Meta ids are digits only "
                           "(as in the WhatsApp Manager, e.g. 106540352242922)")
    return stripped


def token(value: str) -> str:
    """A provider token: it is sent in an `Authorization: Bearer` header, where a space, a
    line break or a non-ASCII character cannot go (every send would fail). Never quoted back:
    it is a secret."""
    stripped = value.strip()
    if not _TOKEN.fullmatch(stripped):
        raise InvalidValue("invalid token: a provider token is visible ASCII characters only "
                           "(no spaces, line breaks or accented letters)")
    return stripped


def channel_key(value: str, name: str) -> str:
    """A Whapi channel id or a Chakra plugin id."""
    stripped = value.strip()
    if not _KEY.fullmatch(stripped):
        raise InvalidValue(f"invalid {name} {value!r}: use letters, digits, '-' and '_' "
                           "(e.g. MANTIS-M72HC or a plugin UUID), at most 128 characters")
    return stripped


def provider_key(provider: Provider, value: str) -> str:
    """The routing id of a channel of `provider`."""
    if provider is Provider.META:
        return numeric_id(value, "phone number id")
    return channel_key(value, "channel id" if provider is Provider.WHAPI else "plugin id")


def display_number(value: str) -> str:
    compact = re.sub(r"[\s().-]", "", value)
    if not _DISPLAY_NUMBER.fullmatch(compact):
        raise InvalidValue(f"invalid display number {value!r}: the number in international "
                           "format, digits only (e.g. 5511940001234)")
    return compact.removeprefix("+")


def graph_version(value: str) -> str:
    if not _GRAPH_VERSION.fullmatch(value):
        raise InvalidValue(f"invalid Graph API version {value!r}: like v23.0")
    return value


def mps(value: int) -> int:
    if not 1 <= value <= 10_000:
        raise InvalidValue(f"invalid messages per second {value}: between 1 and 10000")
    return value


def api_base_url(value: str, *, allow_http: bool = False) -> str:
    """A provider API origin: https with a host (plain http only with
    WACLOUD_DEV_ALLOW_LOCAL_URLS), no user info, query or fragment; a path prefix is kept."""
    rule = ("the provider's API origin, like https://graph.facebook.com"
            + (" (http allowed in development)" if allow_http else
               " (https; plain http only with WACLOUD_DEV_ALLOW_LOCAL_URLS=1)"))
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError as exc:
        raise InvalidValue(f"invalid API base URL: {exc}; give {rule}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise InvalidValue(f"invalid API base URL: scheme {parts.scheme or 'missing'!r}; "
                           f"give {rule}")
    if not parts.hostname:
        raise InvalidValue(f"invalid API base URL: no host; give {rule}")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue(f"invalid API base URL: no user or password in it; give {rule}")
    if parts.query or parts.fragment:
        raise InvalidValue(f"invalid API base URL: no query or fragment; give {rule}")
    return value.strip().rstrip("/")


def media_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """Extra media hosts (`host`, `host:port` or `.domain`), normalized."""
    try:
        return normalize_media_hosts(entries)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def masked_db_url(url: str | URL) -> str:
    """The URL as safe to show: password replaced by ***."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparsable database URL>"
    return parsed.render_as_string(hide_password=True)


def db_url(value: str) -> str:
    """A SQLAlchemy URL of a supported database whose driver is installed."""
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise InvalidValue("invalid database URL: not a SQLAlchemy URL; give e.g. "
                           "postgresql+psycopg://user:password@host/db, "
                           "mysql+pymysql://user:password@host/db or sqlite:////path/x.db"
                           ) from None
    shown = masked_db_url(url)
    if url.get_backend_name() not in DB_BACKENDS:
        raise InvalidValue(f"unsupported database {url.get_backend_name()!r} in {shown}: "
                           f"use one of {', '.join(DB_BACKENDS)}")
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        hint = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://",
                "mariadb": "mariadb+pymysql://"}.get(url.get_backend_name())
        raise InvalidValue(f"the driver of {shown} is not installed ({exc}); "
                           + (f"use {hint}..." if hint else "install it")) from None
    if url.get_backend_name() != "sqlite" and not url.host:
        raise InvalidValue(f"invalid database URL {shown}: no host")
    if not url.database:
        raise InvalidValue(f"invalid database URL {shown}: no database name (or file)")
    return value.strip()
