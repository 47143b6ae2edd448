"""Commands for outbound messages: send (the dead-letter queues are in `dlq_cmds`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from wacloud.adapters.db.tenant.submissions import submit_outbound
from wacloud.adapters.db.types import utcnow
from wacloud.bootstrap import open_credentials
from wacloud.cli.common import (
    DataDir,
    JsonOut,
    app,
    emit,
    fail,
    settings_for,
)
from wacloud.domain.submission import InvalidMessage, parse_submission, parse_validity


@app.command()
def send(tenant: Annotated[str, typer.Option("--tenant")],
         channel: Annotated[str, typer.Option("--channel", help="The channel's provider id.")],
         to: Annotated[str | None, typer.Option("--to")] = None,
         text: Annotated[str | None, typer.Option("--text")] = None,
         json_file: Annotated[Path | None, typer.Option(
             "--json-file", help="A message in Meta's send format (type + its object).")] = None,
         data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Put a message in a tenant's outbox (a running gateway sends it within a second)."""
    if (text is None) == (json_file is None):
        fail("give --text or --json-file")
    data: dict[str, Any] = {"type": "text", "text": {"body": text}}
    if json_file is not None:
        try:
            data = json.loads(json_file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read {json_file}: {exc}")
    data = {**data, "channel": channel}
    if to is not None:
        data["to"] = to
    try:
        submission = parse_submission(data)
        expires_at = parse_validity(data, utcnow())
    except InvalidMessage as exc:
        fail(str(exc))
    settings = settings_for(data_dir)
    broker = open_credentials(settings)
    if broker.tenant_channel(tenant, submission.channel) is None:
        fail(f"tenant {tenant!r} has no channel {submission.channel!r}")
    row, _ = submit_outbound(broker.tenant_store(tenant).engine, channel=submission.channel,
                             recipient=submission.to, type=submission.type,
                             content=submission.content, reply_to=submission.reply_to,
                             client_reference=submission.client_reference,
                             recipient_type=submission.recipient_type, expires_at=expires_at)
    row_id = int(row["id"])
    broker.close()
    emit({"id": row_id, "status": "pending", "status_code": 0}, as_json,
         f"message {row_id} queued in the outbox of {tenant}")
