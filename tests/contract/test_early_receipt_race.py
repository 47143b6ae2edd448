"""Early receipts: a receipt and the save of its message's acceptance that arrive at the same
moment must end with the receipt applied, whichever transaction goes first.

Each order is forced: the first side runs in a transaction held open on one connection, the
second side starts on another connection (in a thread), and only once it has either finished or
is waiting for a lock does the first side commit. Under READ COMMITTED each side used to miss
the other's uncommitted write: the row stayed `accepted` with its `delivered` receipt stored
beside it. Runs on every tenant database (SQLite serializes writers anyway).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tests.contract.test_tenant_store_contract import CHANNEL, outbound_status, receipt
from wacloud.adapters.db.engines import create_throwaway_engine
from wacloud.adapters.db.tenant.outbox import insert_outbound, save_result_in
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.domain.model import OutboundStatus

PMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjRACE"


@pytest.fixture
def store(tenant_db_url: str) -> Iterator[TenantStore]:
    # Several connections at once: no pool of one (the SQLite engines' default).
    tenant_store = TenantStore("acme", create_throwaway_engine(tenant_db_url))
    tenant_store.create_schema()
    try:
        yield tenant_store
    finally:
        tenant_store.engine.dispose()


def wait_for(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.01)


def session_id(conn: Connection) -> int | None:
    name = conn.dialect.name
    if name == "postgresql":
        value = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    elif name in ("mysql", "mariadb"):
        value = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
    else:
        return None
    conn.commit()
    return int(value)


def waiting_for_a_lock(engine: Engine, session: int | None) -> bool:
    """Whether the session is blocked on a lock (SQLite: cannot be asked; its writer waits
    in the busy handler, which commits in order anyway)."""
    if session is None:
        return True
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            query = ("SELECT count(*) FROM pg_stat_activity WHERE pid = :s"
                     " AND wait_event_type = 'Lock'")
        else:
            query = ("SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                     " WHERE trx_mysql_thread_id = :s AND trx_state = 'LOCK WAIT'")
        return bool(conn.execute(sa.text(query), {"s": session}).scalar_one())


@pytest.mark.parametrize("isolation", ["default", "READ COMMITTED"])
@pytest.mark.parametrize("first", ["receipt", "acceptance"])
def test_receipt_and_acceptance_at_the_same_moment_end_applied(store: TenantStore, first: str,
                                                               isolation: str) -> None:
    if isolation != "default" and store.engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("PostgreSQL's default is READ COMMITTED; SQLite has no such level")
    options = {} if isolation == "default" else {"isolation_level": isolation}
    row_id = insert_outbound(store.engine, channel=CHANNEL, recipient="5511987654321",
                             type="text", content={"body": "oi"})

    def store_receipt(conn: Connection) -> None:
        store.store_events_in(conn, [], [receipt(PMID, "delivered", 1_700_000_001)], [])

    def save_acceptance(conn: Connection) -> None:
        save_result_in(conn, store, row_id, status=OutboundStatus.ACCEPTED.value,
                       provider_message_id=PMID, channel=CHANNEL)

    sides: dict[str, Callable[[Connection], None]] = {
        "receipt": store_receipt, "acceptance": save_acceptance}
    held_side = sides[first]
    other_side = next(fn for name, fn in sides.items() if name != first)
    errors: list[BaseException] = []

    with store.engine.connect().execution_options(**options) as held, \
            store.engine.connect().execution_options(**options) as other:
        other_session = session_id(other)
        transaction = held.begin()
        held_side(held)

        def run_other() -> None:
            try:
                with other.begin():
                    other_side(other)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run_other)
        thread.start()
        # The second side has done all it can before the first commits: finished, or blocked.
        wait_for(lambda: not thread.is_alive() or waiting_for_a_lock(store.engine,
                                                                     other_session),
                 timeout=20, message="the second transaction to finish or wait")
        transaction.commit()
        thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert outbound_status(store, row_id) is OutboundStatus.DELIVERED
