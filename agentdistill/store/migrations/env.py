"""Alembic environment. The store passes its own connection (config.attributes["connection"]);
`alembic` on the command line works too with `-x url=...` or AGENTDISTILL_DB."""

from alembic import context
from sqlalchemy import create_engine

from agentdistill.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from agentdistill.store.db import resolve_url

    url = context.get_x_argument(as_dictionary=True).get("url") or resolve_url(None)
    with create_engine(url).connect() as conn:
        _run(conn)
