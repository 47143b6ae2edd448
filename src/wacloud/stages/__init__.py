"""Pipeline stages: plain async functions, one queue message in, messages for the next queues
out. They know nothing of how they are hosted (one process, workers or Lambda)."""
