"""The Ray executor on a real local cluster: a head and two worker nodes started as separate processes on
127.0.0.1 (`ray start`), a real PostgreSQL store, ScienceWorld's expert teacher. The ray executor stores
exactly the episodes the local executor stores; a worker node killed mid-run loses no step and its
episodes are retried; `--resume` after the driver is killed finishes the plan with no duplicates. Bad
input (SQLite with a remote cluster, an address nobody answers) is one line before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agentdistill.store.store import Store
from tests.conftest import free_port, run_cli

ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'agentdistill[ray]'")

TASKS = ["lifespan-longest-lived", "power-component", "identify-life-stages-2"]
SECRET = "pw-rAy-t3st-n0t-in-logs"  # the trust-auth server ignores it; it must still never be written anywhere
# every Ray process of these tests: no auth token to hand around, quick detection of a dead node
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000",
           "RAY_USAGE_STATS_ENABLED": "0"}


class LocalCluster:
    """`ray start` nodes on 127.0.0.1, each its own process group (killed by pid, never `ray stop`)."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="adray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **RAY_ENV}
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.tmp / 'ray'}", "--object-store-memory=100000000", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"])
        self._wait(0)
        for name in ("worker1", "worker2"):
            self.add_worker(name)

    def add_worker(self, name: str) -> None:
        before = self.alive_cpus()
        self._start(name, [f"--address={self.address}", "--num-cpus=2"])
        self._wait(before + 2)

    def alive_cpus(self) -> float:
        out = subprocess.run(
            [sys.executable, "-c", "import ray, json; ray.init(address=%r, logging_level='ERROR'); "
             "print(sum(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']))" % self.address],
            capture_output=True, text=True, env=self.env, timeout=120)
        return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else -1

    def _wait(self, cpus: float, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_cpus() >= cpus:
                return
            time.sleep(1)
        raise RuntimeError(f"Ray cluster did not reach {cpus} CPUs: see {self.tmp}")

    def kill(self, name: str) -> None:
        """The whole node at once, like a machine losing power: every process of its session (`ray start`, its
        raylet, its worker processes, which Ray puts in their own process groups, and their JVMs)."""
        proc = self.nodes.pop(name)
        _signal_session(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            self.kill(name)

    def logs_text(self) -> str:
        out = []
        for p in self.tmp.rglob("*"):
            if p.is_file() and p.suffix in (".log", ".out", ".err", ".txt", ".json") and p.stat().st_size < 20_000_000:
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)


def _signal_session(sid: int, sig: int) -> None:
    """Signal every process whose session is `sid` (a node started with start_new_session: all of it, ours only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
            if int(fields[3]) == sid:
                os.kill(int(entry.name), sig)
        except (OSError, ValueError, IndexError):
            continue


@pytest.fixture(scope="module")
def cluster():
    if not Path(sys.executable).with_name("ray").exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    c = LocalCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(pg_url):
    """The test server's URL with a password in it (ignored by its trust authentication)."""
    from sqlalchemy import create_engine

    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    url = pg_url.replace("agentdistill@", f"agentdistill:{SECRET}@")
    Store.open(url).close()  # the tables exist before a test polls them
    return url


def _recipe(tmp_path: Path, executor: str, address: str | None = None, variations: int = 2, name: str = "r",
            env: str = "scienceworld") -> Path:
    p = tmp_path / f"{name}-{executor}.toml"
    runner = f'executor = "{executor}"\n' + (f'address = "{address}"\n' if address else "")
    tasks = TASKS if env == "scienceworld" else ["easy", "medium"]
    p.write_text(f'name = "{name}"\n[env]\nname = "{env}"\nsplit = "train"\ntasks = {tasks!r}\nvariations = {variations}\n'.replace("'", '"')
                 + '[teacher]\npolicy = "expert"\n'
                 + f"[runner]\nconcurrency = 2\nmax_steps = 40\n{runner}")
    return p


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, env=RAY_ENV, timeout=timeout)


def _run_id(out: str, store: Store, name: str) -> str:
    return max((r["run"] for r in store.list_runs() if r["run"].name == name), key=lambda r: r.created_at).id


def _episodes(store: Store, run_id: str) -> dict[int, tuple]:
    """What a run stored per plan entry (latest attempt): who, which task, how it ended and every step."""
    out = {}
    for e in store.episodes(run_id=run_id, with_steps=True, with_calls=False):
        out[e.plan_index] = (e.role, e.task.name, e.task.variation, e.seed, e.status, e.success, e.score, e.n_steps,
                             [(s.idx, s.observation, s.action, s.reward, s.done, s.next_observation) for s in e.steps])
    return out


def _first_difference(a: dict, b: dict) -> str:
    return "; ".join(_diff1({k: a[k]}, {k: b[k]}) for k in sorted(a) if a[k] != b[k])


def _diff1(a: dict, b: dict) -> str:
    for k in sorted(a):
        for i, (x, y) in enumerate(zip(a[k], b[k])):
            if x != y and i == 8:
                for s, t in zip(x, y):
                    if s != t:
                        return f"plan {k} step {s[0]}: {[(j, u, v) for j, (u, v) in enumerate(zip(s, t)) if u != v]}"
                return f"plan {k}: {len(x)} vs {len(y)} steps"
            if x != y:
                return f"plan {k} field {i}: {x!r} vs {y!r}"
    return ""


def _count(url: str, sql: str) -> list:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as c:
            return c.execute(text(sql)).all()
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_ray_executor_stores_exactly_the_episodes_of_the_local_executor(cluster, pg, tmp_path):
    # TextWorld: its games play the same whatever instance plays them (a ScienceWorld JVM lists objects in an
    # order that depends on what the instance played before, so its observations differ between any two runs
    # that hand episodes to instances differently, local or not)
    local = _cli("run", str(_recipe(tmp_path, "local", name="same", env="textworld", variations=3)), "--db", pg,
                 "--no-progress")
    assert local.returncode == 0, local.stderr[-2000:]
    remote = _cli("run", str(_recipe(tmp_path, "ray", cluster.address, name="same", env="textworld", variations=3)),
                  "--db", pg, "--no-progress")
    assert remote.returncode == 0, remote.stderr[-2000:]
    store = Store.open(pg)
    runs = sorted((r["run"] for r in store.list_runs() if r["run"].name == "same"), key=lambda r: r.created_at)
    assert [r.recipe["runner"]["executor"] for r in runs] == ["local", "ray"]
    a, b = _episodes(store, runs[0].id), _episodes(store, runs[1].id)
    assert sorted(a) == list(range(6)) and sorted(b) == list(range(6))
    assert a == b, _first_difference(a, b)  # same plan entries, same steps, same outcomes
    assert all(e[4] == "done" and e[5] for e in b.values())
    assert not [e for e in store.episodes(run_id=runs[1].id, attempts="all") if e.attempt > 0]  # nothing retried
    # the episodes really ran in the cluster's actors, spread over both worker nodes (the head has no CPU)
    nodes = {e.metrics["ray"]["node"] for e in store.episodes(run_id=runs[1].id)}
    assert len(nodes) == 2, nodes
    assert not any((e.metrics or {}).get("ray") for e in store.episodes(run_id=runs[0].id))
    # the database password reached no log, no output and nothing stored
    assert SECRET not in remote.stdout + remote.stderr + local.stderr
    assert SECRET not in cluster.logs_text()
    dump = _count(pg, "SELECT recipe::text FROM runs") + _count(pg, "SELECT coalesce(error, '') FROM episodes")
    assert not [row for row in dump if SECRET in row[0]]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_resume_after_the_driver_is_killed_finishes_the_plan_without_duplicates(cluster, pg, tmp_path):
    recipe = _recipe(tmp_path, "ray", cluster.address, variations=3, name="driver-kill")
    planned = 9
    proc = subprocess.Popen([sys.executable, "-m", "agentdistill", "run", str(recipe), "--db", pg, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **RAY_ENV})
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        rows = _count(pg, "SELECT count(*) FROM episodes e JOIN runs r ON r.id = e.run_id "
                          "WHERE r.name = 'driver-kill' AND e.status = 'done'")
        done = rows[0][0]
        if done >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver; its actors live on the cluster's nodes
    proc.wait()
    assert 2 <= done < planned
    store = Store.open(pg)
    run = next(r["run"] for r in store.list_runs() if r["run"].name == "driver-kill")
    assert run.status == "running"
    done_before = {e.plan_index: e.id for e in store.episodes(run_id=run.id, status="done")}
    time.sleep(3)  # the cluster ends a dead driver's actors

    p = _cli("run", "--resume", run.id[:8], "--db", pg, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    eps = store.episodes(run_id=run.id, with_steps=True, with_calls=False)
    assert sorted(e.plan_index for e in eps) == list(range(planned))  # each planned episode exactly once
    assert all(e.status == "done" and e.success for e in eps)
    assert {e.plan_index: e.id for e in eps if e.plan_index in done_before} == done_before  # not re-run
    every = store.episodes(run_id=run.id, attempts="all", with_calls=False)
    assert len({(e.plan_index, e.attempt) for e in every}) == len(every)
    for e in eps:
        assert [s.idx for s in e.steps] == list(range(e.n_steps)) and e.steps[-1].done
    assert store.get_run(run.id).status == "done"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_a_worker_node_killed_mid_run_loses_no_step_and_its_episodes_are_retried(cluster, pg, tmp_path):
    recipe = _recipe(tmp_path, "ray", cluster.address, variations=3, name="node-kill")
    planned = 9
    out = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "agentdistill", "run", str(recipe), "--db", pg, "--no-progress"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **RAY_ENV, "COLUMNS": "200"})
    # the node whose actor is mid-episode (has stored steps of an unfinished attempt), found by its actor's pid.
    # An expert episode lasts a fraction of a second, so an actor seen mid-episode may have started its next
    # one (no step yet) by the time its node dies: the actor's process is stopped first (not its node, whose
    # health checks must go on), checked again, and its node killed only if it is still mid-episode.
    q_running = ("SELECT e.metrics, (SELECT count(*) FROM steps s WHERE s.episode_id = e.id) FROM episodes e "
                 "JOIN runs r ON r.id = e.run_id WHERE r.name = 'node-kill' AND e.status = 'running'")

    def actors_mid_episode() -> list[tuple[str, int]]:
        """(worker node, actor pid) of every running attempt with stored steps."""
        found = []
        for metrics, n_steps in _count(pg, q_running):
            pid = ((metrics if isinstance(metrics, dict) else json.loads(metrics or "{}")).get("ray") or {}).get("pid")
            try:
                sid = os.getsid(pid) if pid and n_steps else None
            except ProcessLookupError:
                continue
            found += [(n, pid) for n, p in cluster.nodes.items() if p.pid == sid and n != "head"]
        return found

    def still_mid_episode(actor: tuple[str, int]) -> bool:
        for _ in range(2):  # twice, apart: a commit sent just before the stop has landed by the second look
            time.sleep(0.3)
            if actor not in actors_mid_episode():
                return False
        return True

    victim, stopped = None, None
    deadline = time.time() + 300
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            for stopped in actors_mid_episode()[:1]:
                os.kill(stopped[1], signal.SIGSTOP)
                if still_mid_episode(stopped):
                    victim = stopped[0]
                    break
                os.kill(stopped[1], signal.SIGCONT)
                stopped = None
            time.sleep(0.02)
        assert victim, "no episode was seen mid-run on a worker node"
    except BaseException:  # leave no stopped actor and no driver behind for the next tests
        if stopped:
            os.kill(stopped[1], signal.SIGCONT)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    cluster.kill(victim)  # the whole node, while its actor is mid-episode
    # every step stored by now, with its content
    q_steps = ("SELECT s.id, s.episode_id, s.idx, s.action, s.next_observation FROM steps s JOIN episodes e ON "
               "e.id = s.episode_id JOIN runs r ON r.id = e.run_id WHERE r.name = 'node-kill'")
    before = set(_count(pg, q_steps))
    try:
        rc = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cluster.add_worker(victim)  # back for later tests
    log = (tmp_path / "driver.log").read_text()
    assert rc == 0, log[-3000:]
    assert before <= set(_count(pg, q_steps))  # no step lost
    store = Store.open(pg)
    run = next(r["run"] for r in store.list_runs() if r["run"].name == "node-kill")
    eps = store.episodes(run_id=run.id, with_steps=True, with_calls=False)
    assert sorted(e.plan_index for e in eps) == list(range(planned))
    assert all(e.status == "done" and e.success for e in eps)
    every = store.episodes(run_id=run.id, attempts="all", with_steps=True, with_calls=False)
    lost = [e for e in every if e.status == "error"]
    assert lost, "the killed node was playing no episode"
    for e in lost:  # the lost attempt is kept, marked failed, with what it had stored; a later attempt finished
        assert "Ray actor" in e.error and e.attempt == 0
        assert any(r.plan_index == e.plan_index and r.attempt == 1 and r.status == "done" for r in every)
    assert any(e.n_steps > 0 for e in lost)
    assert len({e.metrics["ray"]["node"] for e in lost}) == 1  # all on the one node that died
    for e in every:
        assert [s.idx for s in e.steps] == list(range(len(e.steps)))
    assert len({(e.plan_index, e.attempt) for e in every}) == len(every)
    assert store.get_run(run.id).status == "done"


@pytest.mark.ray
@pytest.mark.postgres
def test_the_driver_starts_no_env_the_actors_list_the_tasks(cluster, pg, tmp_path):
    """On a cluster, the first actor's env lists the plan: the driver (which on a real cluster may have no env
    installed) starts none, and a bad task name still gives one line before any run is stored."""
    no_env_here = tmp_path / "not-a-directory"
    no_env_here.write_text("")  # this process cannot make or find TextWorld games; the nodes can
    driver = {**RAY_ENV, "AGENTDISTILL_CACHE": str(no_env_here)}
    ok = run_cli("run", str(_recipe(tmp_path, "ray", cluster.address, name="no-driver-env", env="textworld",
                                    variations=1)), "--db", pg, "--no-progress", env=driver, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    store = Store.open(pg)
    episodes = store.episodes(run_id=_run_id(ok.stdout, store, "no-driver-env"), with_calls=False)
    assert len(episodes) == 2 and all(e.status == "done" and e.metrics["ray"] for e in episodes)

    bad = _recipe(tmp_path, "ray", cluster.address, name="bad-task", env="textworld", variations=1)
    bad.write_text(bad.read_text().replace('["easy", "medium"]', '["no-such-task"]'))
    p = run_cli("run", str(bad), "--db", pg, "--no-progress", env=driver, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and "no-such-task" in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and SECRET not in p.stderr
    assert not [r for r in store.list_runs() if r["run"].name == "bad-task"]


@pytest.mark.ray
@pytest.mark.postgres
def test_env_actors_are_kept_for_the_next_run_and_stopped_when_idle_or_needed(cluster, pg, monkeypatch):
    """A run's actors wait, idle, for this process's next run on the same env and store, which plays on them
    instead of starting new ones; they are stopped when a Ray task of this process needs the CPUs, after
    `keep_envs_s` idle, and when the run is interrupted while they play (they are not idle then)."""
    from agentdistill.agents import ray_executor
    from agentdistill.agents.rollout import connect_executor, run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.testing import OpenAIStub

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    store = Store.open(pg)

    def recipe(name: str, keep: float, **roles):
        return parse_recipe({"name": name, "env": {"name": "textworld", "split": "train", "tasks": ["easy", "medium"],
                                                  "variations": 2}, "teacher": {"policy": "expert"}, **roles,
                             "runner": {"concurrency": 2, "max_steps": 40, "executor": "ray",
                                        "address": cluster.address, "keep_envs_s": keep}})

    def run(name: str, keep: float) -> set[int]:
        eps = store.episodes(run_id=run_recipe(store, recipe(name, keep), progress=False), with_calls=False)
        assert len(eps) == 4 and all(e.status == "done" and e.success for e in eps)
        return {e.metrics["ray"]["pid"] for e in eps}

    def wait_gone(pids: set[int], timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.5)
        assert not any(_alive(p) for p in pids), f"env actors {pids} still run"

    try:
        first = run("keep-1", 60)
        second = run("keep-2", 60)
        assert second <= first  # the second run played on the first run's actors
        assert all(_alive(p) for p in first) and len(ray_executor.KEPT_ACTORS) == len(first)
        # Ctrl-C while the kept actors play (a slow student: 1.5 s a step): they are stopped, not kept again. Both
        # must be playing: one between two episodes is idle, and kept (the full suite's load caught that window
        # when this waited for one student episode's row, which is opened before an actor takes it)
        def interrupt_once_both_actors_play_students() -> None:
            deadline = time.time() + 120
            while time.time() < deadline and len(_count(pg, (
                    "SELECT DISTINCT e.id FROM episodes e JOIN runs r ON r.id = e.run_id JOIN steps s ON s.episode_id = e.id "
                    "WHERE r.name = 'keep-interrupted' AND e.role = 'student' AND e.status = 'running'"))) < 2:
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)

        with OpenAIStub("Action: look", latency=1.5) as stub:
            interrupter = threading.Thread(target=interrupt_once_both_actors_play_students)
            interrupter.start()
            with pytest.raises(KeyboardInterrupt):
                run_recipe(store, recipe("keep-interrupted", 60, student={"model": "openai/stub",
                                                                           "api_base": stub.url}), progress=False)
            interrupter.join()
        interrupted = next(r["run"] for r in store.list_runs() if r["run"].name == "keep-interrupted")
        assert store.get_run(interrupted.id).status == "error"
        assert not ray_executor.KEPT_ACTORS
        wait_gone(first)
        # a Ray task of this process (Trace2Skill's analysts, SPARK's tasks) needs the CPUs: they are stopped first
        third = run("keep-3", 60)
        assert not third & first and len(ray_executor.KEPT_ACTORS) == len(third)
        ray_executor.fan_out(connect_executor(store, parse_recipe(
            {"teacher": {"policy": "expert"}, "runner": {"executor": "ray", "address": cluster.address}})),
            ray_executor.where, [()])
        assert not ray_executor.KEPT_ACTORS
        wait_gone(third)
        fourth = run("keep-4", 1)  # new actors, kept for a second only
        assert not fourth & (first | third)
        wait_gone(fourth)
        assert not ray_executor.KEPT_ACTORS
    finally:
        ray_executor.KEPT_ACTORS.stop_all()
        ray.shutdown()
        store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_sqlite_store_with_a_remote_cluster_is_refused_in_one_line(tmp_path):
    recipe = _recipe(tmp_path, "ray", "10.255.255.1:6379", variations=1)
    p = _cli("run", str(recipe), "--db", str(tmp_path / "s.db"), "--no-progress", timeout=300)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL" in lines[0] and "10.255.255.1:6379" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    if (tmp_path / "s.db").exists():  # nothing was recorded
        assert Store.open(str(tmp_path / "s.db")).list_runs() == []


@pytest.mark.postgres
def test_an_address_where_no_cluster_answers_is_one_line(tmp_path, pg):
    recipe = _recipe(tmp_path, "ray", f"127.0.0.1:{free_port()}", variations=1, name="nobody")
    p = _cli("run", str(recipe), "--db", pg, "--no-progress", timeout=300)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Ray cluster answers there" in lines[0] and "ray start --head" in lines[0], p.stderr
    assert SECRET not in p.stderr
    assert not [r for r in Store.open(pg).list_runs() if r["run"].name == "nobody"]


def test_ray_options_need_the_ray_executor_and_stay_out_of_stage_keys():
    from agentdistill.config import parse_recipe
    from agentdistill.errors import ConfigError
    from agentdistill.pipeline.collect import collect_recipe
    from agentdistill.pipeline.run import plan

    with pytest.raises(ConfigError, match='address, gpus_per_episode and resources are for executor = "ray"'):
        parse_recipe({"teacher": {"policy": "expert"}, "runner": {"address": "10.0.0.5:6379"}})
    base = {"teacher": {"policy": "expert"}, "student": {"model": "local/smollm2-135m"}, "collect": {},
            "eval": {"arms": ["base", "teacher"]}}
    local = parse_recipe(base)
    remote = parse_recipe({**base, "runner": {"executor": "ray", "address": "10.0.0.5:6379", "cpus_per_episode": 2}})
    # where episodes run is not what they are: a stage finished on one executor is reused on the other
    assert [(st.name, st.config) for st in plan(local)] == [(st.name, st.config) for st in plan(remote)]
    # ... and the collect stage's episodes run where the recipe says
    assert collect_recipe(remote).runner.executor == "ray" and collect_recipe(remote).runner.cpus_per_episode == 2


def _arms_recipe(tmp_path: Path, student_url: str, address: str) -> Path:
    """A pipeline: 1 collect episode, then eval arms base (an API student every actor reaches) and teacher, each
    with 2 env actors."""
    recipe = tmp_path / "arms.toml"
    recipe.write_text(f'name = "arms"\n[env]\nname = "textworld"\nsplit = "test"\ntasks = ["easy"]\nvariations = 2\n'
                      f'[teacher]\npolicy = "expert"\n[student]\nmodel = "openai/stub"\napi_base = "{student_url}"\n'
                      f'[runner]\nconcurrency = 2\nmax_steps = 3\nexecutor = "ray"\naddress = "{address}"\n'
                      '[collect]\nsplit = "train"\nvariations = 1\n[eval]\narms = ["base", "teacher"]\n'
                      '[report]\nbase = "base"\n')
    return recipe


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_eval_arms_play_side_by_side_on_the_cluster(cluster, pg, tmp_path):
    from agentdistill.testing import OpenAIStub

    with OpenAIStub("Action: look") as stub:  # the student: an API model every actor reaches
        p = _cli("run", str(_arms_recipe(tmp_path, stub.url, cluster.address)), "--db", pg, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    store = Store.open(pg)
    arms = [r["run"] for r in store.list_runs() if r["run"].name in ("arms:base", "arms:teacher")]
    assert sorted(r.name for r in arms) == ["arms:base", "arms:teacher"] and all(r.status == "done" for r in arms)
    # both arms were played at once: each arm's stage began before the other's ended (their 2-episode,
    # 3-step plans take well under a second each, so their episodes alone need not overlap)
    pipeline = next(r["run"] for r in store.list_runs() if r["run"].name == "arms")
    spans = [(st.started_at, st.finished_at) for st in store.stages(pipeline.id) if st.kind == "eval"]
    assert len(spans) == 2 and max(s for s, _ in spans) < min(f for _, f in spans), spans
    for r in arms:
        eps = store.episodes(run_id=r.id)
        assert len(eps) == 2 and all(e.status == "done" for e in eps)
        assert all((e.metrics or {}).get("ray") for e in eps)  # played in the cluster's actors
    assert sum(e.success for r in arms for e in store.episodes(run_id=r.id) if r.name == "arms:teacher") == 2
    assert "base" in p.stdout and "teacher" in p.stdout  # the report's table


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_trace2skill_analysts_and_spark_tasks_fan_out_on_the_cluster(cluster, pg, tmp_path):
    from agentdistill.skills import library
    from agentdistill.skills.trace2skill import TraceAnalyst, distill
    from agentdistill.testing import OpenAIStub

    # the student's action is never admissible: the cascade defers to the expert, so each SPARK task passes
    with OpenAIStub("Action: fly to the moon") as stub:
        recipe = tmp_path / "fan.toml"
        recipe.write_text(f'name = "fan"\n[env]\nname = "textworld"\nsplit = "test"\ntasks = ["easy"]\nvariations = 1\n'
                          f'[teacher]\npolicy = "expert"\n[student]\nmodel = "openai/stub"\napi_base = "{stub.url}"\n'
                          f'[runner]\nconcurrency = 2\nmax_steps = 6\nexecutor = "ray"\naddress = "{cluster.address}"\n'
                          '[collect]\nsplit = "train"\nvariations = 3\n'
                          '[[distill]]\nname = "t2s"\nmethod = "skills"\n'
                          '[[distill]]\nname = "spark"\nmethod = "skills"\ndistiller = "spark"\nvariations = 2\nattempts = 2\n')
        p = _cli("run", str(recipe), "--db", pg, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    store = Store.open(pg)
    t2s = library.get(store, "fan-t2s")
    assert t2s.metrics["ray_nodes"] and len(t2s.metrics["episodes"]) == 3  # one analyst per trajectory, on the cluster
    # the same pack as analysts in this process would write (identical contents come back as the same version)
    local = distill(store, store.episodes(ids=t2s.metrics["episodes"], with_steps=True), name="fan-t2s",
                    analyst=TraceAnalyst()).version
    assert local.id == t2s.id and local.sha256 == t2s.sha256
    spark = library.get(store, "fan-spark")
    assert spark.metrics["solved"] == spark.metrics["tasks"] == 2
    eps = store.episodes(run_id=spark.run_id)
    assert sorted(e.task.variation for e in eps) == [0, 1] and all(e.success for e in eps)
    assert all(e.metrics["ray"]["pid"] != os.getpid() for e in eps)  # each task explored in a Ray task


@pytest.fixture
def small_pg():
    """A PostgreSQL server of its own with `max_connections` as given (the shared one has the default 100)."""
    from contextlib import ExitStack

    from agentdistill.testing import PostgresUnavailable, throwaway_postgres

    with ExitStack() as stack:
        def start(max_connections: int) -> str:
            try:
                url, _ = stack.enter_context(throwaway_postgres(
                    "agentdistill", "small", f"max_connections={max_connections}", "superuser_reserved_connections=0",
                    "fsync=off"))
            except PostgresUnavailable as e:
                pytest.skip(str(e))
            Store.open(url).close()
            return url
        yield start


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_env_actors_are_sized_to_the_connections_the_server_has_free(cluster, small_pg, tmp_path):
    """Each env actor's store holds one connection to the server. With too few free for `concurrency` actors
    (a default server has 100: a cluster run of 64 held 2 each, and a full server made every actor fail to start,
    each episode erroring with 'check that the server is running'), the run plays on as many actors as fit, with a
    warning; the pipeline plays its eval arms in groups that fit; a server with none free is refused in one line
    before a run is stored."""
    from agentdistill.testing import OpenAIStub

    url = small_pg(5)  # the driver keeps 2 (those it holds among them): 3 free for actors
    recipe = tmp_path / "few.toml"
    recipe.write_text('name = "few"\n[env]\nname = "textworld"\nsplit = "train"\ntasks = ["easy"]\nvariations = 8\n'
                      f'[teacher]\npolicy = "expert"\n[runner]\nconcurrency = 4\nmax_steps = 5\nexecutor = "ray"\n'
                      f'address = "{cluster.address}"\nkeep_envs_s = 0\n')
    p = _cli("run", str(recipe), "--db", url, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "has 3 connections free and each env actor or Ray task holds one: 3 run at once instead of 4" in p.stderr
    assert "raise its max_connections by 1" in p.stderr
    store = Store.open(url)
    (run,) = [r["run"] for r in store.list_runs() if r["run"].name == "few"]
    eps = store.episodes(run_id=run.id, attempts="all")
    assert len(eps) == 8 and all(e.status == "done" and e.success for e in eps)  # no attempt lost, none retried
    assert len({e.metrics["ray"]["pid"] for e in eps}) <= 3  # no more actors than fit, reused
    store.close()

    with OpenAIStub("Action: look") as stub:  # two eval arms of 2 actors each: 4 do not fit, so one arm at a time
        p = _cli("run", str(_arms_recipe(tmp_path, stub.url, cluster.address)), "--db", url, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "eval: 1 of 2 arms at a time" in p.stdout, p.stdout
    store = Store.open(url)
    arms = [r["run"] for r in store.list_runs() if r["run"].name in ("arms:base", "arms:teacher")]
    assert len(arms) == 2 and all(e.status == "done" for r in arms for e in store.episodes(run_id=r.id, attempts="all"))
    top = next(r["run"] for r in store.list_runs() if r["run"].name == "arms")
    spans = sorted((st.started_at, st.finished_at) for st in store.stages(top.id) if st.kind == "eval")
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # one after the other
    store.close()

    full = small_pg(2)  # the driver's own connections leave nothing for an actor
    p = _cli("run", str(recipe), "--db", full, "--no-progress", timeout=300)
    lines = p.stderr.strip().splitlines()  # before Ray is joined: none of its notices either
    assert p.returncode != 0 and len(lines) == 1 and "no connection free for env actors" in lines[0], p.stderr
    assert "raise its max_connections by at least" in lines[0] and "Traceback" not in p.stderr
    store = Store.open(full)
    assert [r for r in store.list_runs() if r["run"].name == "few"] == []
    store.close()
