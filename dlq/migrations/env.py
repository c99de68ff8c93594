"""Alembic environment: runs migrations on the connection `dlq.migrate` hands over."""

from __future__ import annotations

from alembic import context

import delivery.outbox  # noqa: F401
import dlq.models  # noqa: F401  (registers the tables on Base.metadata)
from sluice.connections import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
