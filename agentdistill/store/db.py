"""Engine, sessions and migrations for the store.

SQLite file by default (`./agentdistill.db`, WAL), PostgreSQL by URL (other kinds are refused in one line),
from `--db` or `AGENTDISTILL_DB`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from agentdistill.errors import ConfigError
from agentdistill.secrets import register as register_secret

DEFAULT_DB = "agentdistill.db"
MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision: opening a store compares it with the database's, without importing Alembic
# (a tenth of a second in every process, each Ray env actor included). A test checks it against the scripts.
HEAD_REVISION = "0004"


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
    try:
        return _make_engine(url)
    except ModuleNotFoundError as e:
        raise ConfigError(f"database driver missing ({e.name}): pip install 'agentdistill[postgres]'") from e
    except NoSuchModuleError:  # `notadialect://...`, `sqlite+nosuch://...`
        raise ConfigError(f"bad database URL: no database kind {url.split('://')[0]!r}; use a file path or e.g. "
                          "postgresql://user@host/db") from None


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the runner's writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def write_engine(engine: Engine) -> Engine:
    """The pool for a run's hot single-statement writes (a step, an episode's start and finish): on
    PostgreSQL autocommit and no liveness ping at checkout (a round trip of its own per write); a write
    that finds its connection dead goes again once on a fresh one (Store._write, PostgresStepWriter).
    SQLite: the engine itself (no server, nothing to ping)."""
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(engine.url, pool_pre_ping=False, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)


def alembic_config(engine: Engine):
    from alembic.config import Config  # only to migrate (see HEAD_REVISION)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    return HEAD_REVISION


def scripts_head_revision() -> str:
    """The head as Alembic reads it from the migration scripts (what HEAD_REVISION must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(create_engine("sqlite://"))).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision, as Alembic records it (None for a database it never migrated)."""
    with engine.connect() as conn:
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
