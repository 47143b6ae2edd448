"""Metrics, logs and trace ids, shared by every hosting mode."""
