"""Alembic environment: runs against the engine handed over by `ember.store.db._migrate`."""

from alembic import context

from ember.store.db import Base

engine = context.config.attributes["connection_engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
