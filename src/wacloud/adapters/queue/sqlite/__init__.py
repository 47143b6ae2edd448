"""The embedded queue: SQS semantics in one SQLite file."""
