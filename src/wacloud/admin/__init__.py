"""Operator views and actions over HTTP: the admin API (`api.py`), its OpenAPI document
(`openapi.py`, `models.py`) and the queries behind both (`queries.py`, also for the UI)."""
