"""The writer function: `inbound.raw` into the tenant databases (parse every event, check each
Meta entry's signature against its own channel, park what routes nowhere, store with one
transaction per tenant; a failed batch is retried one message at a time): the `inbound`
stage. Nothing feeds `inbound.events`, so no function consumes it.
"""

from __future__ import annotations

from wacloud.hosting.aws_lambda.sqs import SqsStageHandler
from wacloud.stages.envelopes import INBOUND_RAW

# Lambda entry point: `wacloud.hosting.aws_lambda.writer.handler`.
handler = SqsStageHandler({INBOUND_RAW: "inbound"})
