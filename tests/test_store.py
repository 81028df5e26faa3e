"""Store on SQLite and on a real PostgreSQL server: round trips, migrations, export."""

import json

import pytest
from sqlalchemy import text

from agentdistill.errors import AgentDistillError
from agentdistill.store import db
from agentdistill.store.export import export_hf, export_jsonl
from agentdistill.store.store import StepRecord, Store


def _fill(store: Store) -> tuple[str, int]:
    run_id = store.create_run("t", {"name": "t"})
    tid = store.task_id("scienceworld", "boil", 3, "test", goal="boil water")
    ep = store.start_episode(run_id, 0, tid, role="teacher", policy_id="expert", seed=0)
    store.add_step(ep, StepRecord(0, "obs0", "look around", reward=0.0, next_observation="obs1", answered_by="expert"))
    store.add_step(
        ep,
        StepRecord(
            1, "obs1", "go to kitchen", reward=50.0, done=True, next_observation="obs2", info={"score": 100, "won": True},
            answered_by="openai/x", prompt_tokens=10, completion_tokens=3, cost=0.25,
            calls=[{"model": "openai/x", "messages": [{"role": "user", "content": "hi"}], "params": {"n": 1},
                    "outputs": ["Action: go to kitchen"], "prompt_tokens": 10, "completion_tokens": 3, "cost": 0.25, "latency": 0.1}],
        ),
    )
    store.finish_episode(ep, success=True, score=100.0)
    return run_id, ep


def test_round_trip_and_totals(db_url):
    store = Store.open(db_url)
    run_id, ep_id = _fill(store)
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    assert (ep.status, ep.success, ep.n_steps, ep.reward, ep.prompt_tokens, ep.completion_tokens) == ("done", True, 2, 50.0, 10, 3)
    assert ep.cost == pytest.approx(0.25)
    assert [s.action for s in ep.steps] == ["look around", "go to kitchen"]
    assert ep.steps[1].calls[0].outputs == ["Action: go to kitchen"]
    assert ep.task.goal == "boil water"
    # the same task is one row however often it is seen
    assert store.task_id("scienceworld", "boil", 3, "test") == ep.task_id
    stats = store.stats()
    assert (stats["runs"], stats["episodes"], stats["steps"], stats["model_calls"]) == (1, 1, 2, 1)
    assert {"skills", "skill_versions", "datasets", "checkpoints", "evaluations"} <= set(stats)
    # a step index is never written twice
    with pytest.raises(Exception):
        store.add_step(ep_id, StepRecord(1, "x", "y"))
    assert store.stats()["steps"] == 2
    store.close()


def test_export_jsonl_and_hf(db_url, tmp_path):
    store = Store.open(db_url)
    _fill(store)
    n = export_jsonl(store, tmp_path / "eps.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "eps.jsonl").read_text().splitlines()]
    assert n == 1 and rows[0]["task"] == "boil" and len(rows[0]["steps"]) == 2
    assert json.loads(rows[0]["steps"][1]["calls"])[0]["outputs"] == ["Action: go to kitchen"]
    import datasets

    assert export_hf(store, tmp_path / "hf") == 1
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds[0]["steps"][1]["action"] == "go to kitchen" and ds[0]["success"] is True
    assert not (tmp_path / "hf.partial").exists()
    store.close()


def test_the_recorded_head_revision_is_the_migration_scripts_head():
    """Opening a store compares the database with db.HEAD_REVISION instead of reading the scripts (Alembic is
    imported only to migrate): a new migration must move it too."""
    assert db.head_revision() == db.scripts_head_revision(), (
        f"a migration was added: set db.HEAD_REVISION to {db.scripts_head_revision()!r}")


def test_fresh_db_is_at_head_and_old_schema_is_refused(db_url):
    store = Store.open(db_url)
    assert db.current_revision(store.engine) == db.head_revision()
    with store.engine.begin() as conn:  # pretend the schema is from an older release
        conn.execute(text("UPDATE alembic_version SET version_num = 'old0'"))
    store.close()
    with pytest.raises(AgentDistillError, match="agentdistill db upgrade"):
        Store.open(db_url)


def test_sqlite_is_wal(tmp_path):
    store = Store.open(str(tmp_path / "w.db"))
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_db_url_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTDISTILL_DB", str(tmp_path / "env.db"))
    assert db.resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert db.resolve_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"


def test_bulk_add_steps_round_trips(db_url):
    store = Store.open(db_url)
    run_id = store.create_run("bulk", {})
    ep = store.start_episode(run_id, 0, store.task_id("scienceworld", "melt", 1, "train"), role="teacher", policy_id="expert")
    recs = [StepRecord(i, f"o{i}", f"a{i}", reward=1.5, done=i == 99, info={"score": i, "won": i == 99}) for i in range(100)]
    assert store.add_steps(ep, recs) == 100
    steps = store.steps(ep)
    assert [s.action for s in steps] == [f"a{i}" for i in range(100)]
    assert steps[99].info == {"score": 99, "won": True} and steps[99].done is True and steps[0].done is False


def test_list_runs_counts_episodes(db_url):
    store = Store.open(db_url)
    run_id, _ = _fill(store)
    tid = store.task_id("scienceworld", "boil", 4, "test")
    failed = store.start_episode(run_id, 1, tid, role="student", policy_id="llm:x")
    store.finish_episode(failed, success=False)
    store.start_episode(run_id, 2, tid, role="student", policy_id="llm:x")  # still running
    (row,) = store.list_runs()
    assert (row["run"].id, row["episodes"], row["done"], row["successes"]) == (run_id, 3, 2, 1)


def test_runs_list_prints_whole_run_ids_in_a_narrow_terminal(tmp_path):
    """An id is what a user copies into the next command: it is never cut, even at 80 columns."""
    from tests.conftest import run_cli

    store = Store.open(str(tmp_path / "s.db"))
    ids = [store.create_run(f"a run with a rather long descriptive name {i}", {}) for i in range(2)]
    store.close()
    p = run_cli("runs", "list", "--db", str(tmp_path / "s.db"), env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert all(i in p.stdout for i in ids), p.stdout


def test_upgrading_an_older_store_keeps_every_row(db_url):
    """Migrations that rebuild a table (SQLite batch mode) must not cascade-delete what points at it."""
    from sqlalchemy import create_engine

    from agentdistill.store.db import make_engine, resolve_url, upgrade

    engine = make_engine(resolve_url(db_url))
    upgrade(engine, "0003")
    with engine.begin() as conn:  # a store written by the previous release: one episode, two steps, a call
        conn.execute(text("INSERT INTO runs (id, name, kind, status, recipe, created_at) VALUES "
                          "('r1', 'old', 'rollout', 'done', '{}', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO tasks (id, env, name, variation, split, meta) VALUES "
                          "(1, 'scienceworld', 'boil', 0, 'test', '{}')"))
        conn.execute(text("INSERT INTO episodes (id, run_id, plan_index, task_id, role, policy_id, sampling, seed, "
                          "status, reward, n_steps, prompt_tokens, completion_tokens, cost, wall_time, started_at) "
                          "VALUES (1, 'r1', 0, 1, 'teacher', 'expert', '{}', 0, 'done', 1, 2, 0, 0, 0, 0, "
                          "CURRENT_TIMESTAMP)"))
        for i in range(2):
            conn.execute(text(f"INSERT INTO steps (id, episode_id, idx, observation, action, reward, done, info, "
                              f"prompt_tokens, completion_tokens, cost, latency) VALUES ({i + 1}, 1, {i}, 'o', 'a', "
                              f"0, false, '{{}}', 0, 0, 0, 0)"))
        conn.execute(text("INSERT INTO model_calls (step_id, model, messages, params, outputs, prompt_tokens, "
                          "completion_tokens, cost, latency) VALUES (1, 'm', '[]', '{}', '[]', 0, 0, 0, 0)"))
    upgrade(engine)
    engine.dispose()
    store = Store.open(db_url)
    (ep,) = store.episodes(with_steps=True)
    assert ep.attempt == 0 and [s.idx for s in ep.steps] == [0, 1] and len(ep.steps[0].calls) == 1
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for normal use


def test_writers_creating_the_same_task_at_once_get_one_row(db_url):
    """Eval arms side by side, Ray actors and SPARK workers may all meet a new task at the same moment."""
    import threading

    store = Store.open(db_url)
    for variation in range(5):
        barrier, ids, errors = threading.Barrier(6), [], []

        def create():
            barrier.wait()
            try:
                ids.append(store.task_id("textworld", "easy", variation, "test"))
            except Exception as e:  # noqa: BLE001 (the test reports it)
                errors.append(e)

        threads = [threading.Thread(target=create) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(ids)) == 1 and len(ids) == 6, errors


def test_steps_written_from_many_threads_at_once_are_each_stored_once(db_url):
    """Concurrent episodes write their steps from several threads, sharing the store's write pool (on
    PostgreSQL the step goes straight to the driver on a pooled connection, handed back after each write)."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store.open(db_url)
    run_id = store.create_run("t", {})
    tid = store.task_id("textworld", "g", 0, "test")
    episodes = [store.start_episode(run_id, i, tid, role="student", policy_id="p") for i in range(40)]

    def play(ep: int) -> list[int]:
        call = {"model": "local/s", "messages": [{"role": "user", "content": f"ep {ep}"}], "outputs": ["look"]}
        ids = [store.add_step(ep, StepRecord(i, f"o{i}", f"look {ep}", calls=[call] * (i % 3))) for i in range(15)]
        store.finish_episode(ep, success=True)
        return ids

    with ThreadPoolExecutor(16) as pool:
        ids = [i for batch in pool.map(play, episodes) for i in batch]
    assert len(set(ids)) == len(ids) == 15 * len(episodes)
    got = store.episodes(run_id=run_id, with_steps=True)
    assert all(e.n_steps == 15 and {s.action for s in e.steps} == {f"look {e.id}"} for e in got)
    assert [len(s.calls) for s in got[0].steps] == [i % 3 for i in range(15)]
    assert store.stats()["model_calls"] == len(episodes) * sum(i % 3 for i in range(15))
    assert store._writes.pool.checkedout() == 0  # every connection handed back
    with pytest.raises(AgentDistillError, match="no column bogus"):  # not dropped silently
        store.start_episode(run_id, 99, tid, role="student", policy_id="p", bogus=1)
    with pytest.raises(AgentDistillError, match="no column bogus"):
        store.finish_episode(episodes[0], bogus=1)
    assert len(store.episodes(run_id=run_id)) == len(episodes)
    store.close()


def test_a_step_with_mixed_calls_round_trips_and_writes_survive_a_dropped_connection(db_url):
    """A cascade's step carries a student call and a teacher call with different fields; on PostgreSQL the step
    and its calls are one statement on connections the server may drop (restart, idle timeout): the write is
    retried on a fresh connection and stored once."""
    store = Store.open(db_url)
    run_id = store.create_run("t", {})
    ep = store.start_episode(run_id, 0, store.task_id("textworld", "g", 0, "test"), role="student", policy_id="cascade")
    student = {"model": "local/s", "messages": [{"role": "user", "content": "hi"}], "outputs": ["go east"],
               "params": {"n": 4}, "prompt_tokens": 7}
    teacher = {"model": "openai/t", "messages": [{"role": "user", "content": "hi"}], "outputs": ["go west"],
               "prompt_tokens": 9, "completion_tokens": 2, "cost": 0.5, "latency": 0.3}
    store.add_step(ep, StepRecord(0, "o0", "go west", calls=[student, teacher], info={"deferred": True}))
    if db_url.startswith("postgresql"):
        with store.engine.begin() as conn:  # the server drops every other connection to this database
            killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                       "datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
        assert killed >= 1  # the step writer's pooled connection was among them
    bare = {"model": "openai/t", "messages": [{"role": "user", "content": "hi"}], "outputs": ["take key"]}
    store.add_step(ep, StepRecord(1, "o1", "take key", done=True, calls=[bare]))  # no counts at all: defaults
    if db_url.startswith("postgresql"):  # again, before an episode's finish and another's start
        with store.engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                              "datname = current_database() AND pid <> pg_backend_pid()"))
    store.finish_episode(ep, success=True, score=1.0)
    if db_url.startswith("postgresql"):
        with store.engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                              "datname = current_database() AND pid <> pg_backend_pid()"))
    other = store.start_episode(run_id, 1, store.task_id("textworld", "g", 0, "test"), role="student", policy_id="x")
    store.finish_episode(other, status="error", error="gave up")
    got, second = store.episodes(run_id=run_id, with_steps=True)
    assert (got.n_steps, got.prompt_tokens, got.success, got.status) == (2, 0, True, "done")
    assert (second.id, second.status, second.error, second.n_steps) == (other, "error", "gave up", 0)
    assert [[c.model for c in s.calls] for s in got.steps] == [["local/s", "openai/t"], ["openai/t"]]
    last = got.steps[1].calls[0]
    assert (last.prompt_tokens, last.completion_tokens, last.cost, last.latency, last.params) == (0, 0, 0.0, 0.0, {})
    first = got.steps[0].calls
    assert (first[0].params, first[0].cost, first[0].completion_tokens, first[0].latency) == ({"n": 4}, 0.0, 0, 0.0)
    assert (first[1].params, first[1].cost, first[1].outputs) == ({}, 0.5, ["go west"])
    assert got.steps[0].info == {"deferred": True}
    assert store.stats()["model_calls"] == 3
    # an index written twice is an error, whatever happened to the connection before
    with pytest.raises(Exception):
        store.add_step(ep, StepRecord(1, "o1", "another action"))
    with pytest.raises(AgentDistillError, match="no episode"):
        store.finish_episode(10**6)
    if db_url.startswith("postgresql"):  # a retry that meets the unique key takes the stored step only if it is its own
        from agentdistill.store.store import call_row

        writer, step_id = store._step_writer, got.steps[1].id
        mine = StepRecord(1, "o1", "take key", done=True).row(ep)
        assert writer._committed_before(mine, 1) == step_id
        assert writer._committed_before({**mine, "action": "drop key"}, 1) is None  # someone else's step
        assert writer._committed_before(mine, 2) is None  # not the same calls
        assert call_row(None, bare)["params"] == {} and writer._default("params") == {} and writer._default("model") is None
        # the same for an episode's start: a retried INSERT meeting (run, plan index, attempt) takes the stored one
        # only while it can be its own (still running, no step, same task)
        tid = store.task_id("textworld", "g", 0, "test")
        fresh = store.start_episode(run_id, 2, tid, role="student", policy_id="x")
        assert store._started_before(run_id, 2, 0, tid) == fresh
        assert store._started_before(run_id, 2, 0, tid + 1) is None and store._started_before(run_id, 2, 1, tid) is None
        assert store._started_before(run_id, 0, 0, tid) is None  # the first episode: finished, with steps
        with pytest.raises(Exception):  # a real second start of the same attempt is refused
            store.start_episode(run_id, 2, tid, role="student", policy_id="x")
    assert store.stats()["steps"] == 2
    store.close()


def _backends(url: str, application: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (application,)).fetchone()[0]


@pytest.mark.postgres
def test_a_store_holds_one_server_connection_shared_by_reads_and_hot_writes(pg_url):
    """Each connection a store keeps is a server backend out of max_connections (100 by default), and a cluster
    run keeps a store in every env actor: reads and the hot writes share one pool, so a store doing one thing at a
    time holds one connection (two before: a second pool for the writes). The step writer's autocommit does not
    leak into the next transaction on that connection, and a connection the server dropped while idle is still
    replaced before a read, as pool_pre_ping did."""
    from sqlalchemy import update

    from agentdistill.store.models import Episode

    url = pg_url + "?application_name=one-pool-test"
    Store.open(url).close()
    store = Store.open(url, migrate_fresh=False, create=False)  # as an env actor opens it
    assert _backends(pg_url, "one-pool-test") == 1
    run_id = store.create_run("t", {})
    ep = store.start_episode(run_id, 0, store.task_id("textworld", "g", 0, "test"), role="teacher", policy_id="expert")
    store.set_episode_metrics(ep, {"ray": {"node": "n"}})  # an actor's episode: metrics, its task, replay, steps
    store.task_id("textworld", "g", 0, "test", goal="win")
    assert store.steps(ep) == []
    for i in range(3):
        store.add_step(ep, StepRecord(i, f"o{i}", "look", calls=[{"model": "m", "messages": [], "outputs": ["look"]}]))
    store.finish_episode(ep, success=True)
    assert _backends(pg_url, "one-pool-test") == 1
    with store.session() as s:  # after the step writer's autocommit: a transaction that rolls back leaves nothing
        s.execute(update(Episode).where(Episode.id == ep).values(error="never committed"))
        s.rollback()
    (got,) = store.episodes(run_id=run_id)
    assert (got.error, got.n_steps, got.metrics) == (None, 3, {"ray": {"node": "n"}})
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:  # the server drops the idle pooled connection
        assert conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = 'one-pool-test'").fetchone()[0] == 1
    assert [e.n_steps for e in store.episodes(run_id=run_id)] == [3]  # a read: pinged, replaced, answered
    store.add_step(ep, StepRecord(3, "o3", "look"))
    assert _backends(pg_url, "one-pool-test") == 1
    store.close()
    assert _backends(pg_url, "one-pool-test") == 0


@pytest.mark.postgres
def test_a_server_with_no_free_connection_is_one_line_naming_max_connections():
    """A server whose connection slots are all taken (too many env actors, other clients) answers each new
    connection with SQLSTATE 53300: the store says so, and how to fix it, instead of 'is the server running?'.
    The room the Ray executor sizes its actors by counts every role's connections."""
    from contextlib import ExitStack

    import psycopg

    from agentdistill.testing import PostgresUnavailable, throwaway_postgres

    with ExitStack() as stack:
        try:
            url, _ = stack.enter_context(throwaway_postgres("agentdistill", "full", "max_connections=4",
                                                            "superuser_reserved_connections=0", "fsync=off"))
        except PostgresUnavailable as e:
            pytest.skip(str(e))
        held = [stack.enter_context(psycopg.connect(url)) for _ in range(4)]
        with pytest.raises(AgentDistillError) as e:
            Store.open(url)
        message = str(e.value)
        assert "no free connection" in message and "max_connections" in message and "\n" not in message
        assert "check that the server is running" not in message
        for conn in held:
            conn.close()
        store = Store.open(url)
        room = db.server_room(store.engine)  # what the Ray executor sizes its env actors by
        store.close()
        assert (room.usable, room.max_connections) == (4, 4) and 1 <= room.in_use <= 2

        # a role that is not a superuser (as on most servers) sees other roles' sessions without their kind: they
        # count all the same; and a store it may not read is one line saying so, not a failed cleanup's message
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE ROLE app LOGIN")
            conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC")
        app_url = url.replace("agentdistill@", "app@")
        other = stack.enter_context(psycopg.connect(url))  # a superuser's session the app role cannot look into
        engine, _ = db.make_engines(db.resolve_url(app_url))
        app_room = db.server_room(engine)
        engine.dispose()
        assert (app_room.usable, app_room.in_use) == (4, 2), app_room  # app's own connection and the other
        other.close()
        with pytest.raises(AgentDistillError) as e:
            Store.open(app_url)
        assert "permission denied for table alembic_version" in str(e.value) and "\n" not in str(e.value)


def test_a_path_with_percent_and_parentheses_opens_and_migrates(tmp_path):
    """Alembic's config is a ConfigParser: a '%' in the database path once read as interpolation."""
    odd = tmp_path / "runs (100%) here"
    odd.mkdir()
    store = Store.open(str(odd / "s.db"))
    assert store.create_run("r", {}) and (odd / "s.db").exists()
    store.close()


def test_a_whole_assistant_message_as_output_has_its_tool_arguments_redacted(monkeypatch):
    """A model call's output may be the assistant message itself (tool calls from a gateway session or an
    import): secrets in its tool arguments are redacted like those in text outputs."""
    from agentdistill.store.store import call_row

    key = "sk-test-0123456789abcdefghij"
    monkeypatch.setenv("SOME_API_KEY", key)
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "curl", "arguments": f'{{"header": "Bearer {key}"}}'}}]}
    row = call_row(1, {"model": "m", "messages": [{"role": "user", "content": f"key {key}"}], "outputs": [message, key]})
    assert key not in json.dumps(row)
    assert row["outputs"][0]["tool_calls"][0]["function"]["name"] == "curl"
