"""DataFrames of the store, `db export --format parquet`, and the PANDO efficiency metrics, on real
TextWorld runs (expert teacher; an OpenAI-compatible stand-in student that always answers `look`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentdistill.report.efficiency import episode_efficiency, fmt_ratio, run_efficiency
from agentdistill.store.store import StepRecord, Store
from tests.conftest import run_cli

pytest.importorskip("textworld", reason="pip install textworld")
pd = pytest.importorskip("pandas", reason="pip install 'agentdistill[frames]'")

LOOK = "Thought: the room first.\nAction: look"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.testing import OpenAIStub

    path = tmp_path_factory.mktemp("frames") / "s.db"
    store = Store.open(str(path))
    with OpenAIStub(reply=LOOK) as stub:
        recipe = parse_recipe({"name": "frames", "env": {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 2},
                               "teacher": {"policy": "expert"},
                               "student": {"policy": "llm", "model": "openai/stub", "api_base": stub.url + "/v1",
                                           "max_tokens": 16, "history": 1},
                               "runner": {"max_steps": 5, "concurrency": 2}})
        run_id = run_recipe(store, recipe, progress=False)
    store.close()
    return str(path), run_id


def test_frames_match_the_store(store_path):
    from agentdistill import frames

    db, run_id = store_path
    store = Store.open(db, create=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    df = frames.episodes(store, run_id=run_id)
    assert sorted(df.episode_id) == sorted(e.id for e in eps)
    assert set(df.role) == {"teacher", "student"} and set(df.env) == {"textworld"}
    assert df.set_index("episode_id").n_steps.to_dict() == {e.id: e.n_steps for e in eps}
    students = frames.episodes(store, run_id=run_id, role="student")
    assert len(students) == 2 and (students.model == "openai/stub").all()
    assert frames.episodes(store, env="scienceworld").empty  # filters reach SQL
    st = frames.steps(store, run_id=run_id)
    assert len(st) == sum(e.n_steps for e in eps)
    first = min(eps, key=lambda e: e.id)
    rows = st[st.episode_id == first.id].sort_values("idx")
    assert rows.action.tolist() == [s.action for s in first.steps]
    assert rows.observation.tolist() == [s.observation for s in first.steps]
    assert isinstance(rows["info"].iloc[0], dict) and "score" in rows["info"].iloc[0]
    calls = frames.model_calls(store, run_id=run_id)
    assert len(calls) == sum(len(s.calls) for e in eps for s in e.steps if e.role == "student")
    assert (calls.role == "student").all() and calls.outputs.iloc[0] == [LOOK]
    assert calls.messages.iloc[0][0]["role"] == "system"
    assert frames.model_calls(store, run_id=run_id, model="nobody").empty
    runs = frames.runs(store)
    assert runs.run_id.tolist() == [run_id] and runs.recipe.iloc[0]["name"] == "frames"
    eff = frames.episodes(store, run_id=run_id, role="student", efficiency=True)
    assert eff.action_repetition_rate.tolist() == [0.8, 0.8]  # "look" five times: four repeats
    store.close()


def test_efficiency_metrics_follow_their_stated_formulas(store_path):
    db, run_id = store_path
    store = Store.open(db, create=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    per = episode_efficiency(store, [e.id for e in eps])
    best = {}
    for e in eps:
        if e.role == "teacher" and e.success:
            best[e.task_id] = min(best.get(e.task_id, 10**9), e.n_steps)
    for e in eps:
        actions = [s.action.strip().lower() for s in e.steps]
        repeated = sum(a in actions[:i] for i, a in enumerate(actions))
        assert per[e.id].repetition_rate == pytest.approx(repeated / len(actions))
        assert per[e.id].step_overhead == pytest.approx(e.n_steps / best[e.task_id])
        assert per[e.id].cache_utilization is None  # neither the expert nor the stand-in reports cached tokens
    teacher = next(e for e in eps if e.role == "teacher")
    assert per[teacher.id].step_overhead == 1.0 and per[teacher.id].repetition_rate == 0.0
    student = next(e for e in eps if e.role == "student")
    assert student.n_steps == 5 and per[student.id].step_overhead > 1  # the stand-in never finishes the game
    pooled = run_efficiency(store, run_id)
    assert pooled["student"].repetition_rate == pytest.approx(0.8) and pooled["student"].cache_utilization is None
    assert fmt_ratio(pooled["student"].cache_utilization) == "unknown"
    store.close()


def test_prompt_cache_utilization_counts_only_calls_that_report(tmp_path):
    store = Store.open(str(tmp_path / "c.db"))
    run = store.create_run("cache", {})
    task = store.task_id("textworld", "easy", 0, "test")
    ep = store.start_episode(run, 0, task, role="student", policy_id="llm:openai/x", model="openai/x")
    reported = {"model": "openai/x", "messages": [], "outputs": ["look"], "prompt_tokens": 400,
                "params": {"n": 1, "cached_prompt_tokens": 300}}
    silent = {"model": "openai/x", "messages": [], "outputs": ["look"], "prompt_tokens": 1000, "params": {"n": 1}}
    store.add_step(ep, StepRecord(0, "a room", "look", calls=[reported]))
    store.add_step(ep, StepRecord(1, "a room", "Look ", calls=[silent, {**reported, "params": {"cached_prompt_tokens": 100}}]))
    store.finish_episode(ep, success=False)
    eff = episode_efficiency(store, [ep])[ep]
    assert eff.cache_utilization == pytest.approx((300 + 100) / (400 + 400))  # the silent call's 1000 left out
    assert eff.repetition_rate == 0.5  # "Look " repeats "look"
    assert eff.step_overhead is None  # no teacher episode of this task in the store
    store.close()


def test_db_export_parquet(store_path, tmp_path, monkeypatch):
    db, run_id = store_path
    out = tmp_path / "tables"
    r = run_cli("db", "export", str(out), "--format", "parquet", "--db", db, "--role", "student")
    assert r.returncode == 0, r.stderr
    assert "exported 2 episodes" in r.stdout
    tables = {p.stem: pd.read_parquet(p) for p in Path(out).glob("*.parquet")}
    assert set(tables) == {"runs", "episodes", "steps", "model_calls"}
    assert len(tables["episodes"]) == 2 and set(tables["episodes"].role) == {"student"}
    assert len(tables["steps"]) == tables["episodes"].n_steps.sum() == len(tables["model_calls"])
    assert tables["runs"].run_id.tolist() == [run_id]
    assert tables["episodes"].action_repetition_rate.tolist() == [0.8, 0.8]
    assert '"role": "system"' in tables["model_calls"].messages.iloc[0]  # JSON columns as JSON text
    assert not list(tmp_path.glob("*.partial"))
    # a key that sits in the store is redacted on the way out
    secret = "sk-frames-abcdefghijklmnop0123"
    store = Store.open(db, create=False)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE steps SET observation = ? WHERE id = (SELECT min(id) FROM steps)",
                             (f"token {secret}",))
    store.close()
    r = run_cli("db", "export", str(out), "--format", "parquet", "--db", db)
    assert r.returncode == 0, r.stderr
    steps = pd.read_parquet(out / "steps.parquet")
    assert not steps.observation.str.contains(secret, regex=False).any() and steps.observation.str.contains("sk-fram***", regex=False).any()
    # bad input: one line
    r = run_cli("db", "export", str(tmp_path / "x"), "--format", "arrow", "--db", db)
    assert r.returncode == 2 and "use jsonl, chat, hf or parquet" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "file").write_text("x")
    r = run_cli("db", "export", str(tmp_path / "file"), "--format", "parquet", "--db", db)
    assert r.returncode == 2 and "is a file" in r.stderr


def test_runs_show_prints_the_efficiency_columns(store_path):
    db, run_id = store_path
    r = run_cli("runs", "show", run_id, "--db", db)
    assert r.returncode == 0, r.stderr
    student = next(line for line in r.stdout.splitlines() if line.strip().startswith("student"))
    teacher = next(line for line in r.stdout.splitlines() if line.strip().startswith("teacher"))
    assert student.split()[-3:][0] == "80%" and student.split()[-1] == "unknown"
    assert teacher.split()[-3:] == ["0%", "1.00", "unknown"]


def test_frames_efficiency_and_viewer_queries_on_sqlite_and_postgresql(db_url):
    """The SQL behind dataframes, efficiency and the viewer's pages, on both databases the store supports."""
    from fastapi.testclient import TestClient

    from agentdistill import frames
    from agentdistill.view.app import create_app

    store = Store.open(db_url)
    run = store.create_run("both", {"env": {"name": "textworld"}})
    task = store.task_id("textworld", "easy", 0, "test", goal="eat the apple")
    teacher = store.start_episode(run, 0, task, role="teacher", policy_id="expert")
    for i, action in enumerate(["go south", "take apple", "eat apple"]):
        store.add_step(teacher, StepRecord(i, f"room {i}", action, answered_by="expert"))
    store.finish_episode(teacher, success=True, score=100.0)
    student = store.start_episode(run, 1, task, role="student", policy_id="llm:openai/x", model="openai/x")
    call = {"model": "openai/x", "messages": [{"role": "user", "content": "room"}], "outputs": ["Action: look"],
            "prompt_tokens": 100, "params": {"n": 1, "cached_prompt_tokens": 25}}
    for i in range(6):
        store.add_step(student, StepRecord(i, f"room {i}", "look" if i % 2 else "LOOK", answered_by="openai/x",
                                           calls=[call]))
    store.finish_episode(student, success=False, score=0.0)
    store.set_run_status(run, "done")
    eff = episode_efficiency(store, [teacher, student])
    assert eff[student].repetition_rate == pytest.approx(5 / 6) and eff[student].step_overhead == 2.0
    assert eff[student].cache_utilization == 0.25 and eff[teacher].cache_utilization is None
    eps = frames.episodes(store, env="textworld", efficiency=True)
    assert eps.set_index("role").step_overhead_ratio.to_dict() == {"teacher": 1.0, "student": 2.0}
    assert len(frames.steps(store, role="student")) == 6 and len(frames.model_calls(store, model="openai/x")) == 6
    client = TestClient(create_app(store))
    assert "both" in client.get("/?env=textworld&model=openai").text
    assert 'class="run-row"' not in client.get("/?env=scienceworld").text
    page = client.get(f"/runs/{run}?outcome=failure").text
    assert f"/episodes/{student}" in page and f"/episodes/{teacher}" not in page and "83%" in page
    transcript = client.get(f"/episodes/{student}").text
    assert transcript.count('class="step"') == 6 and "(25 cached)" in transcript and "prompt cache 25%" in transcript
    store.close()


def test_report_costs_prints_the_efficiency_columns(store_path):
    db, run_id = store_path
    r = run_cli("report", "costs", f"teacher={run_id}:teacher", f"student={run_id}:student", "--db", db)
    assert r.returncode == 0, r.stderr
    student = next(line for line in r.stdout.splitlines() if line.strip().startswith("student"))
    assert student.split()[-3:][0] == "80%" and student.split()[-1] == "unknown" and float(student.split()[-2]) > 1
