"""Save: write a send result back to its outbox row, idempotently and forward only.

The send stage writes each outcome on the row itself, an acceptance with the receipts that
were waiting for its provider message id; what comes here is an outcome the send stage could
not write (its tenant database was down or locked at that moment). A result of an attempt
applies only while the row is still that attempt's, so a late or redelivered one never moves
a row backwards.
A delivery receipt that arrived before this result is never overwritten; receipts that were
waiting for the provider message id are applied as soon as it is known.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial

from wacloud.adapters.db.tenant import outbox
from wacloud.credentials.broker import CredentialsBroker
from wacloud.observability.tracing import log_context, outbound_trace_id
from wacloud.stages.envelopes import Output

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SaveContext:
    broker: CredentialsBroker


async def save(data: bytes, ctx: SaveContext) -> list[Output]:
    item = json.loads(data)
    tenant, row_id = item["tenant"], int(item["row_id"])
    with log_context(trace_id=outbound_trace_id(tenant, row_id), tenant=tenant,
                     channel=item.get("channel"), message_id=row_id):
        store = await ctx.broker.tenant_store_async(tenant)
        # Grouped with the other results being saved right now: one commit for many rows.
        await store.writes.run(partial(
            outbox.save_result_in, store=store, row_id=row_id,
            status=int(item["status"]), provider_message_id=item.get("provider_message_id"),
            error_code=item.get("error_code"), error_reason=item.get("error_reason"),
            response_excerpt=item.get("response_excerpt"), channel=item.get("channel"),
            owner=item.get("owner")))
        log.debug("send result saved", extra={"status": item["status"],
                                              "error_code": item.get("error_code")})
    return []
