"""Each tenant's own database: its tables and the reads and writes the stages make on it."""
