"""The media function: `inbound.media`, the media copies that did not make it at the first
try, retried with backoff until they are stored or fail for good (the row says which)."""

from __future__ import annotations

from wacloud.hosting.aws_lambda.sqs import SqsStageHandler
from wacloud.stages.envelopes import INBOUND_MEDIA

# Lambda entry point: `wacloud.hosting.aws_lambda.media.handler`.
handler = SqsStageHandler({INBOUND_MEDIA: "media"})
