"""`SqliteQueue.delete`: erasure removes a message by id in any state, only from its queue."""

from __future__ import annotations

from pathlib import Path

from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker


async def test_delete_by_id_in_any_state_and_only_in_this_queue(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("a", max_receives=1))
    other = broker.queue(QueueSpec("b"))
    await queue.send(b"dead")
    # Received once more than max_receives=1 allows: it lands in a.dlq.
    assert [m.body for m in await queue.receive(1, visibility_timeout=0)] == [b"dead"]
    assert await queue.receive(1, visibility_timeout=0) == []
    for body in (b"in-flight", b"visible"):
        await queue.send(body)
    await other.send(b"other")
    flying = await queue.receive(2, visibility_timeout=60)
    assert [m.body for m in flying] == [b"in-flight", b"visible"]
    await queue.release(flying[1].receipt)
    states = {m.body: (m.message_id, m.attributes["state"]) for m in await queue.iter_all()}
    assert {s for _, s in states.values()} == {"dead", "in_flight", "visible"}
    other_id = (await other.iter_all())[0].message_id

    assert await queue.delete([other_id, "junk", ""]) == 0
    assert await queue.delete([i for i, _ in states.values()]) == 3
    assert await queue.iter_all() == []
    assert (await queue.depth()) == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    assert [m.body for m in await other.iter_all()] == [b"other"]
    await queue.ack([flying[0].receipt])  # the worker's late ack is a harmless no-op
    await broker.close()
