"""The saver function: `outbound.results` back into the outbox rows (status, provider message
id, error), idempotent and forward only."""

from __future__ import annotations

from wacloud.hosting.aws_lambda.sqs import SqsStageHandler
from wacloud.stages.envelopes import OUTBOUND_RESULTS

# Lambda entry point: `wacloud.hosting.aws_lambda.saver.handler`.
handler = SqsStageHandler({OUTBOUND_RESULTS: "save"})
