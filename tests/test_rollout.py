"""Rollouts on real parts: ScienceWorld jar, SmolLM2 weights, the store; crash and resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from agentdistill.agents.rollout import resume_run, run_recipe
from agentdistill.config import parse_recipe
from agentdistill.store.store import Store
from tests.conftest import free_port, run_cli

SHORT = ["lifespan-longest-lived", "power-component"]


def test_expert_teacher_run_stores_every_step(db_url):
    store = Store.open(db_url)
    recipe = parse_recipe(
        {"env": {"tasks": SHORT, "variations": 2}, "teacher": {"policy": "expert"}, "runner": {"concurrency": 2, "max_steps": 40}}
    )
    run_id = run_recipe(store, recipe, progress=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    assert len(eps) == 4 and all(e.status == "done" and e.success and e.score == 100 for e in eps)
    for e in eps:
        assert [s.idx for s in e.steps] == list(range(e.n_steps)) and e.steps[-1].done
        assert all(s.answered_by == "expert" for s in e.steps)
        # each step's observation is the previous step's result
        assert all(a.next_observation == b.observation for a, b in zip(e.steps, e.steps[1:]))
    assert store.get_run(run_id).status == "done"


@pytest.mark.slow
def test_smollm2_student_episode_stored_with_model_calls_and_tokens(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe(
        {
            "env": {"tasks": ["lifespan-longest-lived"], "variations": 1},
            "student": {"model": "local/smollm2-135m", "max_tokens": 24, "history": 2},
            "runner": {"max_steps": 3},
        }
    )
    run_id = run_recipe(store, recipe, progress=False)
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    assert ep.status == "done" and ep.role == "student" and ep.model == "local/smollm2-135m"
    assert ep.n_steps == 3 and ep.prompt_tokens > 100 and ep.completion_tokens > 0
    assert ep.sampling["max_tokens"] == 24
    for st in ep.steps:
        assert st.answered_by == "local/smollm2-135m" and st.action and st.raw_output is not None
        (call,) = st.calls
        assert call.messages[0]["role"] == "system" and "Your task is" in call.messages[1]["content"]
        assert call.outputs == [st.raw_output] and call.prompt_tokens == st.prompt_tokens > 0
        assert 0 < call.completion_tokens <= 24 and call.latency > 0
    assert ep.prompt_tokens == sum(s.prompt_tokens for s in ep.steps)


def test_failing_model_is_retried_recorded_as_error_and_the_run_goes_on(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    spec = {
        "env": {"tasks": ["lifespan-longest-lived"], "variations": 2},
        "teacher": {"policy": "expert"},
        "student": {"model": "openai/ghost", "api_base": dead, "max_retries": 1},
        "runner": {"max_steps": 10, "max_attempts": 2, "fail_on_error": 0.5},
    }
    run_id = run_recipe(store, parse_recipe(spec), progress=False)
    eps = store.episodes(run_id=run_id)
    assert [e.status for e in eps if e.role == "teacher"] == ["done", "done"]
    students = [e for e in eps if e.role == "student"]
    assert [(e.status, e.attempt) for e in students] == [("error", 1), ("error", 1)]
    assert all("ghost" in e.error for e in students)
    # every attempt is kept, not only the last
    every = [e for e in store.episodes(run_id=run_id, attempts="all") if e.role == "student"]
    assert sorted((e.plan_index, e.attempt) for e in every) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert store.get_run(run_id).status == "done"  # 2 of 4 failed: not above fail_on_error = 0.5

    # the default tolerates no failed episode: the run is marked error and says so in one line
    from agentdistill.errors import RunFailed

    spec["runner"] = {"max_steps": 10, "max_attempts": 1}
    with pytest.raises(RunFailed) as e:
        run_recipe(store, parse_recipe(spec), progress=False)
    assert "2 of 4 episodes ended in error" in str(e.value) and "\n" not in str(e.value)
    (run,) = [r["run"] for r in store.list_runs() if r["run"].id != run_id]
    assert run.status == "error"


def _count(db: str) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            return dict(c.execute(text("SELECT status, count(*) FROM episodes GROUP BY status")).all())
    except OperationalError:  # the run has created the file but not yet its tables
        return {}
    finally:
        engine.dispose()


def test_sigkill_mid_run_then_resume_gives_exactly_the_planned_episodes(tmp_path):
    db = tmp_path / "crash.db"
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "crash"\n[env]\ntasks = ["lifespan-longest-lived", "power-component", "identify-life-stages-2"]\n'
        "variations = 3\n[teacher]\npolicy = \"expert\"\n[runner]\nconcurrency = 2\nmax_steps = 40\n"
    )
    planned = 9
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentdistill", "run", str(recipe), "--db", str(db), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if db.exists() and 2 <= _count(str(db)).get("done", 0) and proc.poll() is None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its JVMs, like a machine losing power
    proc.wait()
    before = _count(str(db))
    assert 2 <= before.get("done", 0) < planned, before

    store = Store.open(str(db))
    (run,) = [r["run"] for r in store.list_runs()]
    assert run.status == "running"  # it never got to say otherwise
    done_before = {e.plan_index: e.id for e in store.episodes(run_id=run.id, status="done")}

    p = run_cli("run", "--resume", run.id[:6], "--db", str(db), "--no-progress")
    assert p.returncode == 0, p.stderr
    eps = store.episodes(run_id=run.id, with_steps=True)
    assert sorted(e.plan_index for e in eps) == list(range(planned))  # each planned episode exactly once
    assert all(e.status == "done" and e.success for e in eps)
    # finished episodes were kept as they were, not re-run
    assert {e.plan_index: e.id for e in eps if e.plan_index in done_before} == done_before
    for e in eps:
        assert [s.idx for s in e.steps] == list(range(e.n_steps))
    assert store.get_run(run.id).status == "done"


def _interrupt(store: Store, episode_id: int, keep: int, corrupt: bool = False) -> list[int]:
    """Make a finished episode look like one a crash cut off after `keep` steps."""
    from sqlalchemy import delete, update

    from agentdistill.store.models import Episode, Run, Step

    with store.session() as s, s.begin():
        s.execute(delete(Step).where(Step.episode_id == episode_id, Step.idx >= keep))
        if corrupt:
            s.execute(update(Step).where(Step.episode_id == episode_id, Step.idx == 0).values(next_observation="???"))
        s.execute(update(Episode).where(Episode.id == episode_id).values(status="running", success=None))
        s.execute(update(Run).values(status="running"))
    return [st.id for st in store.steps(episode_id)]


@pytest.mark.parametrize("corrupt", [False, True])
def test_resume_continues_an_interrupted_episode_by_replaying_its_steps(tmp_path, corrupt):
    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe({"env": {"tasks": ["power-component"], "variations": 1}, "teacher": {"policy": "expert"}})
    run_id = run_recipe(store, recipe, progress=False)
    (ep,) = store.episodes(run_id=run_id)
    full = [st.action for st in store.steps(ep.id)]
    kept_ids = _interrupt(store, ep.id, keep=3, corrupt=corrupt)
    resume_run(store, run_id, progress=False)
    (again,) = store.episodes(run_id=run_id)
    steps = store.steps(again.id)
    assert again.id == ep.id and again.status == "done" and again.success
    assert [st.idx for st in steps] == list(range(len(steps)))
    if corrupt:  # a history the env cannot reproduce is discarded and the episode redone from its start
        assert steps[0].next_observation != "???"
    else:  # replayed steps are kept as stored and the episode goes on from there, on the gold path
        assert [st.id for st in steps[:3]] == kept_ids
        again_actions = [st.action for st in steps]
        # ScienceWorld registers a closed circuit on the step that closes it or one tick later (measured:
        # 1 run in 6 finishes a step early), so one run may need the gold path's final `wait1` and the
        # other not: both must walk the same gold path, at most one step apart.
        n = min(len(full), len(again_actions))
        assert again_actions[:n] == full[:n] and abs(len(full) - len(again_actions)) <= 1, (full, again_actions)


class _Counted:
    """Starts and closes of every instance of a wrapped env class, across the process."""

    started: list = []
    closed: list = []


def _counted_textworld():
    from agentdistill.envs.textworld import TextWorldEnv

    class Counted(TextWorldEnv):
        name = "textworld"

        def __init__(self, **kw):
            super().__init__(**kw)
            _Counted.started.append(self)

        def reset(self, *args, **kwargs):
            self._resetting = True  # TextWorld's reset closes the previous game
            try:
                return super().reset(*args, **kwargs)
            finally:
                self._resetting = False

        def close(self):
            if not getattr(self, "_resetting", False):
                _Counted.closed.append(self)
            super().close()

    return Counted


def test_a_local_run_keeps_its_envs_for_the_next_run_of_the_process(monkeypatch, tmp_path):
    """runner.keep_envs_s: a run's idle env instances wait for this process's next run on the same env, which
    plays on them instead of starting new ones; they are closed after keep_envs_s idle, at once with 0, and
    when a run starts another env."""
    from agentdistill.agents.rollout import KEPT_ENVS
    from agentdistill.envs import registry

    module = sys.modules[__name__]
    module.Counted = _counted_textworld()
    monkeypatch.setitem(registry._REGISTRY, "tw-counted", f"{__name__}:Counted")
    monkeypatch.setattr(_Counted, "started", [])
    monkeypatch.setattr(_Counted, "closed", [])
    store = Store.open(str(tmp_path / "s.db"))

    def run(keep: float, env: str = "tw-counted") -> None:
        recipe = parse_recipe({"env": {"name": env, "split": "train", "tasks": ["easy"], "variations": 4},
                               "teacher": {"policy": "expert"},
                               "runner": {"concurrency": 2, "max_steps": 40, "keep_envs_s": keep}})
        eps = store.episodes(run_id=run_recipe(store, recipe, progress=False), with_calls=False)
        assert len(eps) == 4 and all(e.status == "done" and e.success for e in eps)

    run(60)
    assert len(_Counted.started) == 2 and not _Counted.closed and len(KEPT_ENVS) == 2
    run(60)  # played on the first run's instances
    assert len(_Counted.started) == 2 and not _Counted.closed and len(KEPT_ENVS) == 2
    run(0)  # on them again, then closed with the run
    assert len(_Counted.started) == 2 and len(_Counted.closed) == 2 and not len(KEPT_ENVS)
    run(0.5)  # new instances, closed after half a second idle
    assert len(_Counted.started) == 4 and len(KEPT_ENVS) == 2
    deadline = time.time() + 30
    while len(_Counted.closed) < 4 and time.time() < deadline:
        time.sleep(0.1)
    assert len(_Counted.closed) == 4 and not len(KEPT_ENVS)
    run(60)
    run(60, env="textworld")  # another env: the kept ones only hold memory now, and are closed
    deadline = time.time() + 30
    while len(_Counted.closed) < 6 and time.time() < deadline:
        time.sleep(0.1)
    assert len(_Counted.started) == 6 and len(_Counted.closed) == 6
    assert len(KEPT_ENVS) == 2  # the plain TextWorld run's instances
    store.close()
