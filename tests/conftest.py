"""Shared fixtures. Tests use real parts: the ScienceWorld jar, SmolLM2 weights, a real PostgreSQL
server (started here from the system's binaries), llama-cpp-python's OpenAI-compatible server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def pg_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (apt: postgresql), or a skip saying why."""
    if os.environ.get("AGENTDISTILL_TEST_PG"):
        yield os.environ["AGENTDISTILL_TEST_PG"]
        return
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not (initdb and postgres):
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql (or set AGENTDISTILL_TEST_PG)")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="ad-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, initdb, "-D", str(data / "db"), "-U", "agentdistill", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [*as_user, postgres, "-D", str(data / "db"), "-p", str(port), "-k", str(data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import psycopg

    deadline = time.time() + 30
    while True:
        try:
            with psycopg.connect(f"postgresql://agentdistill@127.0.0.1:{port}/postgres", autocommit=True) as conn:
                conn.execute("CREATE DATABASE agentdistill_test")
            break
        except psycopg.OperationalError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("PostgreSQL did not start within 30 s")
            time.sleep(0.3)
    yield f"postgresql://agentdistill@127.0.0.1:{port}/agentdistill_test"
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)


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
