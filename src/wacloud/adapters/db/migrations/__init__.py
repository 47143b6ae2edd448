"""Alembic migrations for the registry and for tenant databases (two separate histories)."""
