"""Media on the local disk (embedded mode)."""
