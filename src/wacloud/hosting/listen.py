"""Listening sockets bound before anything else starts.

`serve` binds its public and internal ports first, so a port already in use stops it with one
line before it builds the gateway, starts a worker or collects a single outbox row (uvicorn
would only find out after all that). The bound sockets are handed to uvicorn.
"""

from __future__ import annotations

import errno
import socket

BACKLOG = 2048  # uvicorn's default


class ListenError(Exception):
    """A port we cannot listen on; the message is one line saying what to do."""


def bind_listener(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A TCP socket bound to host:port and listening, or ListenError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(f"cannot listen on {host}:{port} ({what}): unknown address "
                          f"({exc}); give an IP address or a host name of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = (f"another process is using it: stop it or choose another {flag}")
        elif exc.errno == errno.EACCES:
            fix = f"ports below 1024 need privileges: choose another {flag}"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "that address is not on this machine: give one of its addresses or 0.0.0.0"
        else:
            fix = f"choose another address or {flag}"
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {host}:{port} ({what}): {reason}; {fix}") from None
    return sock
