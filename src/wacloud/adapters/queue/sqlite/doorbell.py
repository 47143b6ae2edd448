"""Cross-process wake-ups for the SQLite queue's long polls (Linux abstract unix sockets).

Processes sharing one queue file (`wacloud serve` and its stage worker) would otherwise only
see each other's sends at their next poll. Each broker binds a datagram socket in the abstract
namespace (no file to clean up; it vanishes with the process) and lists its name in the queue
file's `doorbells` table; after a commit that made messages visible, the writer rings every
other listed bell with the names of those queues. A ring is only a hint: a lost datagram costs
one poll interval, never a message. Where abstract sockets do not exist the bell is silent and
long polls fall back to polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

SCHEMA = "CREATE TABLE IF NOT EXISTS doorbells (name TEXT PRIMARY KEY, pid INTEGER NOT NULL)"
PEER_REFRESH_S = 1.0


class Doorbell:
    def __init__(self, on_ring: Callable[[set[str]], None]) -> None:
        self.name = f"wacloud-queue-{os.getpid()}-{secrets.token_hex(6)}"
        self.enabled = sys.platform.startswith("linux")
        self._on_ring = on_ring
        self._peers: list[str] = []
        self._peers_at = 0.0
        self._closed = False
        self._inbox: socket.socket | None = None
        self._outbox: socket.socket | None = None
        if not self.enabled:
            return
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.bind("\0" + self.name)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        threading.Thread(target=self._listen, name="sqlite-queue-doorbell", daemon=True).start()

    # -- called by the broker's writer thread, inside or right after its transactions ----------

    def register(self, conn: sqlite3.Connection) -> None:
        if self.enabled:
            conn.execute(SCHEMA)
            conn.execute("INSERT OR REPLACE INTO doorbells (name, pid) VALUES (?, ?)",
                         (self.name, os.getpid()))

    def unregister(self, conn: sqlite3.Connection) -> None:
        if self.enabled:
            conn.execute("DELETE FROM doorbells WHERE name = ?", (self.name,))

    def refresh_peers(self, conn: sqlite3.Connection) -> None:
        """Re-read the other bells at most once a second (runs inside a writer transaction)."""
        if not self.enabled or time.monotonic() - self._peers_at < PEER_REFRESH_S:
            return
        self._peers_at = time.monotonic()
        rows = conn.execute("SELECT name FROM doorbells WHERE name != ?", (self.name,))
        self._peers = [row[0] for row in rows]

    def ring(self, queues: Iterable[str], conn: sqlite3.Connection) -> None:
        if not self.enabled or not self._peers or self._outbox is None:
            return
        payload = "\n".join(sorted(queues)).encode()
        gone = []
        for peer in self._peers:
            try:
                self._outbox.sendto(payload, "\0" + peer)
            except ConnectionRefusedError:  # that process has exited
                gone.append(peer)
            except OSError:  # its buffer is full: it is busy and will poll anyway
                pass
        if gone:
            self._peers = [p for p in self._peers if p not in gone]
            with contextlib.suppress(sqlite3.Error):
                conn.executemany("DELETE FROM doorbells WHERE name = ?", [(p,) for p in gone])

    # -- the listening thread -----------------------------------------------------------------

    def _listen(self) -> None:
        assert self._inbox is not None
        while not self._closed:
            try:
                data = self._inbox.recv(65536)
            except OSError:
                return  # closed
            if data:
                self._on_ring(set(data.decode("utf-8", "replace").split("\n")))

    def close(self) -> None:
        self._closed = True
        if self._outbox is not None:  # wake the listener so that its thread ends
            with contextlib.suppress(OSError):
                self._outbox.sendto(b"", "\0" + self.name)
        for sock in (self._inbox, self._outbox):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
