"""Alembic environment for the registry schema; run through wacloud.adapters.db.migrate."""

from __future__ import annotations

from alembic import context

from wacloud.adapters.db.registry.store import metadata

config = context.config
# Offline (`--sql`, e.g. to read or check the SQL for SQL Server without a server): the URL
# names the dialect; otherwise wacloud passes the connection it opened.
connection = None if context.is_offline_mode() else config.attributes["connection"]
context.configure(
    connection=connection,
    url=config.get_main_option("sqlalchemy.url") if connection is None else None,
    literal_binds=connection is None,
    target_metadata=metadata,
    version_table="wacloud_registry_version",
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
