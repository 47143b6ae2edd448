"""Ways to host the stages: one process (embedded), a worker per stage, or Lambda handlers."""
