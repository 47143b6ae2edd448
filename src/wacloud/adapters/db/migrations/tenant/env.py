"""Alembic environment for the tenant schema; run through wacloud.adapters.db.migrate."""

from __future__ import annotations

from alembic import context

from wacloud.adapters.db.tenant.tables import metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="wacloud_tenant_version",
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
