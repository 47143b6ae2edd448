"""The sender function: the FIFO `outbound.send` queue, one provider call per message.

Messages of one group (tenant, sending number, recipient) are handled in order; a message
whose send must wait (rate limit, provider trouble) is released with its delay and reported
failed, and so is everything after it in its group, which keeps the order.
"""

from __future__ import annotations

from wacloud.hosting.aws_lambda.sqs import SqsStageHandler
from wacloud.stages.envelopes import OUTBOUND_SEND

# Lambda entry point: `wacloud.hosting.aws_lambda.sender.handler`.
handler = SqsStageHandler({OUTBOUND_SEND: "send"})
