"""Injected faults against real parts: a misbehaving OpenAI-compatible server, ScienceWorld JVMs killed at
start, reset and step. The run finishes (or stops with one line), no step is lost, only the episode in
flight pays for a dead environment, and errored episodes are retried with every attempt kept."""

from __future__ import annotations

import threading
import time

import pytest

from agentdistill.agents.rollout import run_recipe
from agentdistill.config import parse_recipe
from agentdistill.errors import ModelError
from agentdistill.models.litellm_backend import LiteLLMModel
from agentdistill.store.store import Store
from agentdistill.testing import OpenAIStub

MSGS = [{"role": "user", "content": "Task: open the door. Action:"}]


def test_an_answer_without_choices_is_retried_with_backoff_not_looped_on():
    with OpenAIStub(failures=["empty", "empty"]) as stub:
        model = LiteLLMModel("openai/stub", api_base=stub.url, backoff_base=0.05, max_retries=3)
        t0 = time.perf_counter()
        (c,) = model.complete(MSGS)
        assert c.text == "Action: look around" and len(stub.seen) == 3 and time.perf_counter() - t0 >= 0.05
    with OpenAIStub(failures=["empty"] * 100) as stub:
        model = LiteLLMModel("openai/stub", api_base=stub.url, backoff_base=0.01, max_retries=2)
        with pytest.raises(ModelError, match="after 3 attempt"):
            model.complete(MSGS, n=2)
        assert len(stub.seen) == 3  # bounded: not thousands of requests a minute


def test_retry_after_is_honoured_and_bounded():
    with OpenAIStub(failures=[{"status": 429, "headers": {"Retry-After": "1"}}]) as stub:
        LiteLLMModel("openai/stub", api_base=stub.url, backoff_base=0.01).complete(MSGS)
        assert stub.seen[1]["t"] - stub.seen[0]["t"] >= 0.9
    with OpenAIStub(failures=[{"status": 503, "headers": {"Retry-After": "3600"}}]) as stub:
        t0 = time.perf_counter()
        LiteLLMModel("openai/stub", api_base=stub.url, backoff_base=0.01, backoff_max=0.5).complete(MSGS)
        assert time.perf_counter() - t0 < 5  # a server cannot park the run for an hour


def test_a_run_whose_episodes_all_fail_exits_non_zero_in_one_line(tmp_path):
    """`agentdistill run` reports a run whose every episode errored: exit 1 and a one-line verdict, every
    attempt stored; a recipe that tolerates the failures (fail_on_error = 1) exits 0."""
    pytest.importorskip("textworld")
    import sqlite3

    from tests.conftest import run_cli

    with OpenAIStub(failures=[400] * 100) as stub:  # a client error: not retried, each step fails at once
        for tolerate, code in [(0.0, 1), (1.0, 0)]:
            recipe = tmp_path / f"r{tolerate}.toml"
            recipe.write_text(f'[env]\nname = "textworld"\nsplit = "test"\ntasks = ["easy"]\nvariations = 2\n'
                              f'[student]\nmodel = "openai/stub"\napi_base = "{stub.url}"\n'
                              f'[runner]\nmax_steps = 3\nmax_attempts = 2\nfail_on_error = {tolerate}\n')
            db = tmp_path / f"s{tolerate}.db"
            p = run_cli("run", str(recipe), "--db", str(db), "--no-progress")
            assert p.returncode == code, (p.stdout, p.stderr)
            assert "Traceback" not in p.stderr
            if code:
                # one warning line per failed attempt as it happens, then the verdict in one line
                *warnings, verdict = p.stderr.strip().splitlines()
                assert len(warnings) == 4 and all(" failed: " in w for w in warnings), warnings
                assert "2 of 2 episodes ended in error after up to 2 attempt(s)" in verdict
            rows = sqlite3.connect(db).execute("SELECT status, attempt FROM episodes ORDER BY plan_index, attempt")
            assert sorted(rows) == [("error", 0), ("error", 0), ("error", 1), ("error", 1)]  # every attempt kept
            status = sqlite3.connect(db).execute("SELECT status FROM runs").fetchone()[0]
            assert status == ("error" if code else "done")


def test_resume_gives_episodes_that_ran_out_of_attempts_new_ones(tmp_path):
    """A run that failed because its episodes errored out of attempts (an endpoint down for a while, a
    browser stalled under load) is finished by `--resume`: each errored episode gets `max_attempts` new
    attempts, the failed ones stay stored."""
    pytest.importorskip("textworld")
    import sqlite3

    from tests.conftest import run_cli

    with OpenAIStub(failures=[400] * 4) as stub:  # 2 episodes x 2 attempts fail, then the endpoint answers
        recipe = tmp_path / "r.toml"
        recipe.write_text(f'[env]\nname = "textworld"\nsplit = "test"\ntasks = ["easy"]\nvariations = 2\n'
                          f'[student]\nmodel = "openai/stub"\napi_base = "{stub.url}"\n'
                          f'[runner]\nmax_steps = 3\nmax_attempts = 2\n')
        db = tmp_path / "s.db"
        p = run_cli("run", str(recipe), "--db", str(db), "--no-progress")
        assert p.returncode == 1 and "2 of 2 episodes ended in error" in p.stderr, p.stderr
        (run_id,) = sqlite3.connect(db).execute("SELECT id FROM runs").fetchone()
        p = run_cli("run", "--resume", run_id, "--db", str(db), "--no-progress")
        assert p.returncode == 0, p.stderr
    rows = sqlite3.connect(db).execute("SELECT plan_index, attempt, status, n_steps FROM episodes ORDER BY 1, 2").fetchall()
    assert [r[:3] for r in rows] == [(0, 0, "error"), (0, 1, "error"), (0, 2, "done"),
                                     (1, 0, "error"), (1, 1, "error"), (1, 2, "done")]
    assert all(n == 3 for _, _, status, n in rows if status == "done")  # played to max_steps on the answers
    assert sqlite3.connect(db).execute("SELECT status FROM runs").fetchone()[0] == "done"


# ---- dead environments ----------------------------------------------------------------------------
class _Faults:
    """Which calls (counted across every instance in the process) kill the instance's JVM first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.kill: dict[str, set[int]] = {}
        self.killed: list[str] = []

    def hit(self, what: str) -> bool:
        with self.lock:
            n = self.counts[what] = self.counts.get(what, 0) + 1
            if n in self.kill.get(what, set()):
                self.killed.append(f"{what}#{n}")
                return True
            return False


@pytest.fixture
def dying_env(monkeypatch):
    """ScienceWorld whose JVM is killed (a real process kill) at chosen starts, resets or steps."""
    pytest.importorskip("scienceworld")
    from agentdistill.envs import check, registry
    from agentdistill.envs.scienceworld import ScienceWorldEnv

    if not check("scienceworld").ready:
        pytest.skip("ScienceWorld not ready (Java 17)")
    faults = _Faults()

    class Dying(ScienceWorldEnv):
        name = "scienceworld"

        def __init__(self, **kw):
            super().__init__(**kw)
            if faults.hit("start"):
                self._die()
                self._sw.get_task_names()  # the dead JVM fails while the env is still starting

        def _die(self):
            self._sw._gateway.java_process.kill()
            self._sw._gateway.java_process.wait()

        def reset(self, task, seed=0):
            if faults.hit("reset"):
                self._die()
            return super().reset(task, seed)

        def step(self, action):
            if faults.hit("step"):
                self._die()
            return super().step(action)

    import sys

    module = sys.modules[__name__]
    module.Dying = Dying
    monkeypatch.setitem(registry._REGISTRY, "sw-dying", f"{__name__}:Dying")
    return faults


def _run(tmp_path, attempts: int, fail_on_error: float = 1.0):
    store = Store.open(str(tmp_path / f"s{attempts}.db"))
    recipe = parse_recipe({"env": {"name": "sw-dying", "tasks": ["lifespan-longest-lived"], "variations": 6},
                           "teacher": {"policy": "expert"},
                           "runner": {"concurrency": 2, "max_steps": 10, "max_attempts": attempts,
                                      "fail_on_error": fail_on_error}})
    run_id = run_recipe(store, recipe, progress=False)
    return store, run_id


def test_a_jvm_killed_at_start_reset_and_step_costs_only_the_episode_in_flight(dying_env, tmp_path):
    # instance 2 dies while starting, the 3rd reset and the 9th step find their JVM dead
    dying_env.kill = {"start": {2}, "reset": {3}, "step": {9}}
    store, run_id = _run(tmp_path, attempts=1)
    assert sorted(dying_env.killed) == ["reset#3", "start#2", "step#9"]
    eps = store.episodes(run_id=run_id, with_steps=True)
    errors = [e for e in eps if e.status == "error"]
    assert len(eps) == 6 and len(errors) == 3, [(e.status, e.error) for e in eps]
    assert all(e.status == "done" and e.success for e in eps if e.status != "error")
    for e in eps:  # every step that was played is stored, in order
        assert [s.idx for s in e.steps] == list(range(len(e.steps)))
    assert all("\n" not in e.error[:200] for e in errors)
    assert store.get_run(run_id).status == "done"


def test_with_retries_every_episode_still_succeeds_and_every_attempt_is_kept(dying_env, tmp_path):
    dying_env.kill = {"reset": {2}, "step": {7}}
    # concurrency decides which episode plays the 7th step: it may be the retry of the one whose reset
    # died, so two kills can cost one episode two attempts; a third always succeeds
    store, run_id = _run(tmp_path, attempts=3, fail_on_error=0.0)
    final = store.episodes(run_id=run_id)
    assert len(final) == 6 and all(e.status == "done" and e.success for e in final)
    every = store.episodes(run_id=run_id, attempts="all")
    failed = [e for e in every if e.status == "error"]
    assert len(every) == 8 and len(failed) == 2
    for e in failed:  # each failed attempt is kept, and the episode's final attempt is a later one
        assert any(f.plan_index == e.plan_index and f.attempt > e.attempt for f in final)
    assert {(e.plan_index, e.attempt) for e in every} == {(e.plan_index, e.attempt) for e in failed + final}
