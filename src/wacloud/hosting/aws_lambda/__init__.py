"""The stages as AWS Lambda handlers, with the original system's roles (`deploy/aws/`).

One module per function, each with a `handler(event, context)`:

- `receiver`: webhooks over HTTP (API Gateway HTTP API or a function URL, payload 2.0), the
  same checks as `wacloud serve` (signatures, routes, size), onto `inbound.raw`;
- `writer`: `inbound.raw` (parse, route, park, store; one transaction per tenant) and
  `inbound.events` into the tenant databases;
- `media`: `inbound.media`, the media copies that did not make it at the first try;
- `collector`: on a schedule, claims pending outbox rows and queues them on `outbound.send`;
- `sender`: the FIFO `outbound.send`, one provider call per message;
- `saver`: `outbound.results` back into the outbox rows;
- `credentials`: the credentials broker (`wacloud.hosting.lambda_credentials`), with the
  secrets of the other functions.

The SQS-triggered ones hand each batch to the stage's `StageRunner` (the same stage functions,
ack / retry with backoff / dead-letter as in `wacloud worker`) and answer Lambda with the
records that failed (`batchItemFailures`). Shared glue: `runtime` (the gateway, built once per
container), `secrets` (settings from Secrets Manager), `records` (SQS event records as queue
messages), `sqs` (batches through the runner, partial batch responses), `http_event` (API
Gateway events as ASGI requests).
"""
