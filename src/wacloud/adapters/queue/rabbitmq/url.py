"""`amqp://USER:PW@HOST:PORT/VHOST?prefix=NAME&partitions=N` read into a `BrokerAddress`.

The password is kept apart (`repr=False`) and `safe` gives the address without it: that is the
only form that reaches logs, exceptions and reprs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 256


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str
    prefix: str = ""
    partitions: int = DEFAULT_PARTITIONS

    @property
    def safe(self) -> str:
        """The address for messages: no password, no query."""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"

    @property
    def connect_url(self) -> str:
        """What aio-pika connects to (holds the password: never log it)."""
        return (f"{self.scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(self.vhost, safe='')}")


def parse_address(url: str) -> BrokerAddress:
    """Read an amqp(s) URL; errors name the part that is wrong, never the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"WACLOUD_QUEUE_URL: not an amqp URL (scheme {parts.scheme!r})")
    try:
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        raise ValueError("WACLOUD_QUEUE_URL: the port is not a number") from None
    if not parts.hostname:
        raise ValueError("WACLOUD_QUEUE_URL: no host")
    # An empty path is the default virtual host "/"; "/%2F" spells it explicitly.
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"prefix", "partitions"})
    if unknown:
        raise ValueError(f"WACLOUD_QUEUE_URL: unknown parameter(s) {', '.join(unknown)} "
                         "(known: prefix, partitions)")
    prefix = query.get("prefix", [""])[-1]
    raw_partitions = query.get("partitions", [str(DEFAULT_PARTITIONS)])[-1]
    if not raw_partitions.isdigit() or not 1 <= int(raw_partitions) <= MAX_PARTITIONS:
        raise ValueError(f"WACLOUD_QUEUE_URL: partitions must be 1 to {MAX_PARTITIONS}")
    return BrokerAddress(scheme=parts.scheme, host=parts.hostname, port=port,
                         user=unquote(parts.username or "guest"),
                         password=unquote(parts.password or "guest"), vhost=vhost,
                         prefix=prefix, partitions=int(raw_partitions))
