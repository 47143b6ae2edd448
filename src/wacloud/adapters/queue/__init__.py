"""Message queues with SQS semantics."""
