"""Shared fixtures. Tests use real parts: the ScienceWorld jar, SmolLM2 weights, a real PostgreSQL
server (started here from the system's binaries), llama-cpp-python's OpenAI-compatible server."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from agentdistill.testing import PostgresUnavailable, free_port, throwaway_postgres  # noqa: F401 (free_port: for tests)

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Ctrl-C as in a terminal, also when the suite was started in the background (a shell starts background jobs
# with SIGINT ignored and every child inherits that): the Ctrl-C tests interrupt this process and the CLI
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_kept_between_tests():
    """Env instances a test's runs kept (runner.keep_envs_s) end with it: the next test starts its own (a test
    may count starts, or wrap its env class)."""
    yield
    import sys

    for module, kept in (("agentdistill.agents.rollout", "KEPT_ENVS"), ("agentdistill.agents.ray_executor", "KEPT_ACTORS")):
        if module in sys.modules:
            getattr(sys.modules[module], kept).stop_all()


@pytest.fixture(autouse=True, scope="module")
def _memory_given_back_after_each_module():
    """A module's in-process models (weights, KV caches) go when it ends, and freed heap pages go back to the
    OS (glibc keeps them otherwise): without this the pytest process held 15 GB by test_opd, and the CLI
    subprocesses of later tests, which train models of their own, crawled for lack of memory (CI timed out)."""
    yield
    import ctypes
    import sys

    if "agentdistill.models.registry" in sys.modules:
        sys.modules["agentdistill.models.registry"].release_in_process_models()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.fixture(scope="session")
def pg_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (apt: postgresql), or a skip saying why."""
    if os.environ.get("AGENTDISTILL_TEST_PG"):
        yield os.environ["AGENTDISTILL_TEST_PG"]
        return
    with ExitStack() as stack:
        try:
            url, _ = stack.enter_context(throwaway_postgres("agentdistill", "agentdistill_test", "fsync=off"))
        except PostgresUnavailable as e:
            pytest.skip(f"{e} (or set AGENTDISTILL_TEST_PG)")
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The same store code against SQLite and a real PostgreSQL; each test gets an empty database."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    url = request.getfixturevalue("pg_url")
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # fresh schema per test
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url


@pytest.fixture(scope="session")
def sw_env():
    """One real ScienceWorld JVM shared by the tests that only read from it."""
    from agentdistill.envs import check, make

    status = check("scienceworld")
    if not status.ready:
        pytest.skip(f"ScienceWorld not ready: {status.missing()}")
    env = make("scienceworld")
    yield env
    env.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["agentdistill", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


FAMILIES = ["lifespan-longest-lived", "power-component", "identify-life-stages-2"]


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    """Expert (teacher) episodes on train variations of three task families."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    path = tmp_path_factory.mktemp("icd") / "s.db"
    store = Store.open(str(path))
    recipe = parse_recipe(
        {"env": {"split": "train", "tasks": FAMILIES, "variations": 2}, "teacher": {"policy": "expert"},
         "runner": {"concurrency": 2, "max_steps": 40}}
    )
    run_recipe(store, recipe, progress=False)
    return store
