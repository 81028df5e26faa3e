"""Hostile and broken input: recipes, database URLs, echoed keys, oversized outputs. Every refusal is one
line without a traceback, nothing is written on refused input, and no secret reaches the store, logs or
exports."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys

import pytest

from agentdistill.agents.rollout import run_recipe
from agentdistill.config import parse_recipe
from agentdistill.store.store import Store
from agentdistill.testing import OpenAIStub
from tests.conftest import run_cli

pytest.importorskip("textworld", reason="pip install textworld")


def _one_line(p, fragment: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in p.stderr, p.stderr


RECIPES = {
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00", "not UTF-8 text"),
    "empty": (b"", "needs a [teacher] or a [student] table"),
    "no model name": (b'[student]\nmodel = "openai/"\n', "names no model"),
    "no credentials": (b'[student]\nmodel = "openai/gpt-4.1-mini"\n', "needs credentials"),
    "unknown task": (b'[env]\nname = "textworld"\ntasks = ["nope"]\n[teacher]\npolicy = "expert"\n', "unknown TextWorld task"),
    "unknown split": (b'[env]\nname = "textworld"\nsplit = "nope"\n[teacher]\npolicy = "expert"\n', "unknown TextWorld split"),
    "unknown option": (b'[env]\nname = "textworld"\noptions = { bogus = 1 }\n[teacher]\npolicy = "expert"\n', "bad option"),
    "pipeline, unknown train task": (b'[env]\nname = "textworld"\n[teacher]\npolicy = "expert"\n[student]\n'
                                     b'model = "local/smollm2-135m"\n[collect]\ntasks = ["nope"]\n', "unknown TextWorld task"),
}


@pytest.mark.parametrize("case", list(RECIPES))
def test_bad_recipes_fail_in_one_line_and_write_nothing(case, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data, fragment = RECIPES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(data)
    db = tmp_path / "s.db"
    p = run_cli("run", str(recipe), "--db", str(db), env={"OPENAI_API_KEY": ""})
    _one_line(p, fragment)
    assert not db.exists() and not list(tmp_path.glob("s.db*"))


def test_bad_database_locations_fail_in_one_line(tmp_path):
    (tmp_path / "corrupt.db").write_bytes(b"this is not a database, not at all, not even close" * 4)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE customers (id INTEGER)")
    other.commit()
    other.close()
    cases = {
        str(tmp_path): "is a directory",
        str(tmp_path / "missing" / "s.db"): "does not exist",
        str(tmp_path / "corrupt.db"): "not an SQLite database",
        str(tmp_path / "other.db"): "not agentdistill's",
        "postgresql://me:hunter2hunter2@127.0.0.1:1/x": "check that the server is running",
        "postgresql://bad url": "check that the server is running",
        "notadialect+x://": "bad database URL",
        "postgresql://me:hunter2hunter2@host:notaport/x": "bad database URL",
        "postgresql://me:hunter2hunter2@:::/x": "bad database URL",
        "mysql://me:hunter2hunter2@h/x": "SQLite or PostgreSQL, not 'mysql'",
    }
    for db, fragment in cases.items():
        p = run_cli("collect", "--policy", "expert", "--env", "textworld", "--task", "easy", "--variations", "1",
                    "--db", db)
        _one_line(p, fragment)
        assert "hunter2hunter2" not in p.stderr
    # the unrelated database was not touched
    assert [r[0] for r in sqlite3.connect(tmp_path / "other.db").execute(
        "SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]
    # read-only commands never create a store
    p = run_cli("runs", "list", "--db", str(tmp_path / "new.db"))
    _one_line(p, "no store at")
    assert not (tmp_path / "new.db").exists()
    # nor does resuming a run, which can only live in an existing store
    p = run_cli("run", "--resume", "3f2a9c1b", "--db", str(tmp_path / "new.db"))
    _one_line(p, "no store at")
    assert not list(tmp_path.glob("new.db*"))


def test_two_processes_creating_a_new_store_at_once(tmp_path):
    code = "import sys; from agentdistill.store.store import Store; Store.open(sys.argv[1]).close()"
    for i in range(15):
        db = str(tmp_path / f"race{i}.db")
        procs = [subprocess.Popen([sys.executable, "-c", code, db], stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errs = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errs
        assert Store.open(db).stats()["runs"] == 0


KEY = "Zq8-very-private-credential-0987654321"


def _stored_text(db: str) -> str:
    """Every text in every table, as one string."""
    conn = sqlite3.connect(db)
    out = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        for row in conn.execute(f"SELECT * FROM {table}"):
            out += [str(v) for v in row]
    return "\n".join(out)


def test_a_key_given_under_any_name_never_reaches_the_store_logs_or_exports(tmp_path, monkeypatch, caplog):
    """The server echoes the key it received into its answers (outputs, thoughts, then later prompts)."""
    monkeypatch.setenv("MY_CREDS", KEY)  # a variable name that says nothing about secrets
    caplog.set_level(logging.DEBUG)  # every log line, not only warnings

    def echo(body):
        return f"Thought: my key is {KEY}\nAction: look"

    with OpenAIStub(reply=echo) as stub:
        store = Store.open(str(tmp_path / "s.db"))
        recipe = parse_recipe({
            "env": {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 1},
            "student": {"model": "openai/echo", "api_base": stub.url, "api_key_env": "MY_CREDS", "max_tokens": 32},
            "runner": {"max_steps": 3}})
        run_id = run_recipe(store, recipe, progress=False)
        assert stub.seen[0]["auth"] == f"Bearer {KEY}"  # it went to the server, and only there
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    assert ep.n_steps == 3 and "***" in ep.steps[0].thought
    assert KEY not in _stored_text(str(tmp_path / "s.db"))
    assert KEY not in caplog.text
    out = tmp_path / "x.jsonl"
    p = run_cli("db", "export", str(out), "--db", str(tmp_path / "s.db"), env={"MY_CREDS": KEY})
    assert p.returncode == 0 and KEY not in out.read_text()
    # a server error quoting the key: redacted in the error that is stored and printed
    with OpenAIStub(failures=[{"status": 401, "json": {"error": {"message": f"bad key {KEY}"}}}]) as stub:
        recipe = parse_recipe({
            "env": {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 1},
            "student": {"model": "openai/echo", "api_base": stub.url, "api_key_env": "MY_CREDS", "max_retries": 0},
            "runner": {"max_steps": 2, "max_attempts": 1, "fail_on_error": 1.0}})
        run_id = run_recipe(store, recipe, progress=False)
    (ep,) = store.episodes(run_id=run_id)
    assert ep.status == "error" and "401" in ep.error and KEY not in ep.error
    assert KEY not in _stored_text(str(tmp_path / "s.db")) and KEY not in caplog.text


def test_an_oversized_completion_is_stored_bounded_with_its_size(tmp_path):
    huge = "Thought: " + "blah " * 200_000 + "\nAction: look"  # ~1 MB for a 64-token request
    with OpenAIStub(reply=huge) as stub:
        store = Store.open(str(tmp_path / "s.db"))
        recipe = parse_recipe({
            "env": {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 1},
            "student": {"model": "openai/big", "api_base": stub.url, "max_tokens": 64},
            "runner": {"max_steps": 1}})
        run_id = run_recipe(store, recipe, progress=False)
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    st = ep.steps[0]
    assert len(st.raw_output) <= 40_000 and len(st.calls[0].outputs[0]) <= 40_000
    db_size = (tmp_path / "s.db").stat().st_size + sum(f.stat().st_size for f in tmp_path.glob("s.db-wal"))
    assert db_size < 1_000_000  # not stored whole, not twice
    assert st.calls[0].outputs[0] == st.raw_output  # the backend cut it where the request should have ended
    # when a stored text is cut, the cut is visible and the full size is kept
    from agentdistill.store.store import MAX_FIELD_CHARS, StepRecord

    store.add_step(ep.id, StepRecord(1, "o" * (MAX_FIELD_CHARS + 10), "look", raw_output="r"))
    long = store.steps(ep.id)[1]
    assert long.observation.endswith(f"[... truncated by agentdistill: {MAX_FIELD_CHARS + 10} characters in all]")
    assert long.info["truncated"] == {"observation": MAX_FIELD_CHARS + 10}
    json.dumps(long.info)


def test_redaction_follows_the_environment_as_it_changes(monkeypatch):
    """The secret values are cached between calls (every stored step is redacted); a key set, changed or
    removed afterwards is honoured at the next call."""
    from agentdistill.secrets import redact

    first, second = "first-secret-value-1234", "second-secret-value-5678"
    assert redact(f"x {first}") == f"x {first}"
    monkeypatch.setenv("SERVICE_API_KEY", first)
    assert redact(f"x {first}") == "x ***"
    monkeypatch.setenv("SERVICE_API_KEY", second)
    assert redact(f"{first} {second}") == f"{first} ***"
    monkeypatch.delenv("SERVICE_API_KEY")
    assert redact(second) == second
