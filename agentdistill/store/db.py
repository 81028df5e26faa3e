"""Engine, sessions and migrations for the store.

SQLite file by default (`./agentdistill.db`, WAL), PostgreSQL by URL (other kinds are refused in one line),
from `--db` or `AGENTDISTILL_DB`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InvalidatePoolError, NoSuchModuleError

from agentdistill.errors import ConfigError
from agentdistill.secrets import register as register_secret

DEFAULT_DB = "agentdistill.db"
MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision: opening a store compares it with the database's, without importing Alembic
# (a tenth of a second in every process, each Ray env actor included). A test checks it against the scripts.
HEAD_REVISION = "0006"


def resolve_url(db: str | None) -> str:
    """`--db` value, else AGENTDISTILL_DB, else ./agentdistill.db; a bare path means SQLite."""
    db = db or os.environ.get("AGENTDISTILL_DB") or DEFAULT_DB
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().absolute()}"
    if db.startswith("postgresql://"):  # prefer psycopg 3, which is what our extra installs
        db = "postgresql+psycopg://" + db[len("postgresql://") :]
    try:
        parsed = make_url(db)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError("bad database URL: use a file path or e.g. postgresql://user@host:5432/db") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"bad database URL: agentdistill stores runs in SQLite or PostgreSQL, not "
                          f"{parsed.get_backend_name()!r}: use a file path or e.g. postgresql://user@host/db")
    register_secret(parsed.password if isinstance(parsed.password, str) else None)  # never in a log or error
    return db


def check_location(url: str, create: bool = True) -> None:
    """One line for a SQLite path that cannot hold a store (before SQLite creates anything)."""
    if not url.startswith("sqlite") or url in ("sqlite://", "sqlite:///:memory:"):
        return
    path = Path(make_url(url).database or "")
    if path.is_dir():
        raise ConfigError(f"--db {path} is a directory: give a database file path, e.g. {path / DEFAULT_DB}")
    if not path.parent.is_dir():
        raise ConfigError(f"--db {path}: its directory {path.parent} does not exist: create it or choose another path")
    if not create and not path.exists():
        raise ConfigError(f"no store at {path}: nothing has been recorded there yet (check --db / AGENTDISTILL_DB)")


def describe(url: str) -> str:
    """The URL for messages: never its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the database URL"


def make_engine(url: str) -> Engine:
    """The store's engine: transactions, as any SQLAlchemy engine."""
    return make_engines(url)[0]


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(the store's engine, the engine of its hot single-statement writes: a step, an episode's start and finish).
    On PostgreSQL both share one pool whose connections are in autocommit, used as they are by the hot writes
    (inside `unpinged()`) and switched into transactions by the first; SQLite: the same engine twice."""
    try:
        return _make_engines(url)
    except ModuleNotFoundError as e:
        raise ConfigError(f"database driver missing ({e.name}): pip install 'agentdistill[postgres]'") from e
    except NoSuchModuleError:  # `notadialect://...`, `sqlite+nosuch://...`
        raise ConfigError(f"bad database URL: no database kind {url.split('://')[0]!r}; use a file path or e.g. "
                          "postgresql://user@host/db") from None


def _make_engines(url: str) -> tuple[Engine, Engine]:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the runner's writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine, engine  # no server, nothing to ping; a write is a transaction either way
    # One pool for reads and the hot writes: each connection a store keeps is a server backend, and a cluster
    # run keeps a store in every env actor (with a second pool for the writes, each actor held 3).
    # Its connections are in autocommit, as the hot writes want them (a single statement commits, no BEGIN and
    # COMMIT round trips), so those pay for no switching; the store's engine switches them into transactions at
    # checkout and back on return. Liveness is checked at checkout as pool_pre_ping would, except for the hot
    # writes (see `unpinged`).
    writes = create_engine(url, pool_pre_ping=False, isolation_level="AUTOCOMMIT")
    event.listen(writes, "connect", _mark_fresh)
    event.listen(writes, "checkout", _ping_unless_unpinged(writes.dialect))
    # READ COMMITTED, PostgreSQL's own default, is what the store's transactions are written for
    return writes.execution_options(isolation_level="READ COMMITTED"), writes


_UNPINGED: ContextVar[bool] = ContextVar("agentdistill_unpinged", default=False)


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts in this block skip the liveness ping: a hot write (a step, an episode's start and finish) is a
    single statement that goes again once on a fresh connection if it finds its own dead (Store._write,
    PostgresStepWriter), so a ping would only add a round trip to every write."""
    token = _UNPINGED.set(True)
    try:
        yield
    finally:
        _UNPINGED.reset(token)


_FRESH = "agentdistill_fresh"


def _mark_fresh(_dbapi_connection, record) -> None:
    record.info[_FRESH] = True  # just connected: nothing to ping at its first checkout


def _ping_unless_unpinged(dialect):
    """pool_pre_ping's check as a checkout event: a connection the server dropped while it sat in the pool (a
    restart, an idle timeout) is replaced before a read uses it, and so is every connection older than it
    (InvalidatePoolError: a restart dropped them all, the unpinged ones too)."""

    def ping(dbapi_connection, record, _proxy) -> None:
        if record.info.pop(_FRESH, False) or _UNPINGED.get():
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as e:
            if dialect.is_disconnect(e, dbapi_connection, None):
                raise InvalidatePoolError() from e
            raise

    return ping


class ServerRoom(NamedTuple):
    """A PostgreSQL server's client connections: how many a role like the store's may hold in all (max_connections
    less the slots reserved for superusers and, on PostgreSQL 16+, for pg_use_reserved_connections), how many are
    open now (anyone's), and the server's max_connections."""

    usable: int
    in_use: int
    max_connections: int

    @property
    def free(self) -> int:
        return max(self.usable - self.in_use, 0)


def server_room(engine: Engine) -> ServerRoom | None:
    """The connections the store's server has room for; None on SQLite (no server)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        most, su_reserved, reserved, superuser, in_use = conn.exec_driver_sql(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int,"
            " coalesce(current_setting('reserved_connections', true)::int, 0),"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
            # another role's sessions show no backend_type to a role that is not a superuser, only their database
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            "  OR (backend_type IS NULL AND datid IS NOT NULL))").one()
    return ServerRoom(most - (0 if superuser else su_reserved + reserved), in_use, most)


def alembic_config(engine: Engine):
    from alembic.config import Config  # only to migrate (see HEAD_REVISION)

    cfg = Config()
    # Alembic's config is a ConfigParser: a "%" in a path or password would read as interpolation
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return HEAD_REVISION


def scripts_head_revision() -> str:
    """The head as Alembic reads it from the migration scripts (what HEAD_REVISION must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(create_engine("sqlite://"))).get_current_head()


def current_revision(engine: Engine | Connection) -> str | None:
    """The database's schema revision, as Alembic records it (None for a database it never migrated)."""
    with engine.connect() if isinstance(engine, Engine) else nullcontext(engine) as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:  # agentdistill's history is linear: several heads is not its store
        raise ConfigError(f"the store records several schema revisions ({', '.join(sorted(versions))}): "
                          "point --db at an agentdistill store")
    return versions[0] if versions else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction. On SQLite, foreign keys are off meanwhile: Alembic's batch
    mode rebuilds a table (create, copy, drop, rename), and dropping the old `episodes` with foreign keys on
    would cascade-delete every step. The keys are checked again before the transaction commits."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction, or SQLite ignores it
            conn.commit()  # ends SQLAlchemy's autobegun transaction (the driver began none for a PRAGMA)
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ConfigError(f"migration left {len(broken)} rows pointing at missing rows: rolled back")
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
