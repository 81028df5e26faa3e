"""Time to first page of `agentdistill view` on a big store (100k steps by default).

The store is filled with synthetic but schema-valid rows through the Store's own API (runs, tasks,
episodes, bulk steps, finished episodes) plus one model call per student step inserted in bulk, so that
every page has real volume to page and filter: 46 runs x 125 episodes x 15 (teacher) or 20 (student) steps,
the teacher episodes being the step-overhead reference, one 2,000-step episode (transcript paging), a skill with two
versions, an evaluation, a dataset. Then the real server (`agentdistill view`) is started and each page
is fetched over HTTP: the first (cold) request and the median of 5 more, full response body included.

Run: python benchmarks/view_first_page.py [--steps 100000] [--db /tmp/big.db]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.store.models import Dataset, Evaluation  # noqa: E402
from agentdistill.store.store import StepRecord, Store  # noqa: E402

STEPS_PER_EPISODE = 20
EPISODES_PER_RUN = 125
OBS = "This room is called the kitchen. In it, you see: a stove, a sink, a fridge, a table, a door to the hallway. "


def fill(store: Store, total_steps: int) -> dict:
    t0 = time.perf_counter()
    mean_steps = STEPS_PER_EPISODE - 2.5  # teacher episodes (half) are 5 steps shorter
    n_runs = max(1, round(total_steps / (mean_steps * EPISODES_PER_RUN)))
    envs = ["textworld", "scienceworld"]
    tasks = {(env, v): store.task_id(env, "boil" if env == "scienceworld" else "easy", v, "test", goal="boil water")
             for env in envs for v in range(25)}
    student_steps: list[int] = []
    first = {}
    for r in range(n_runs):
        env = envs[r % 2]
        kind = ("rollout", "eval", "collect", "pipeline")[r % 4]
        run = store.create_run(f"bench-{r}", {"env": {"name": env}}, kind=kind)
        for e in range(EPISODES_PER_RUN):
            role = "teacher" if e % 2 == 0 else "student"
            task = tasks[(env, (e // 2) % 25)]
            model = None if role == "teacher" else "openai/gpt-4.1-mini"
            ep = store.start_episode(run, e, task, role=role, policy_id="expert" if role == "teacher" else f"llm:{model}",
                                     model=model)
            n = STEPS_PER_EPISODE - (5 if role == "teacher" else 0)  # the teacher is shorter: overhead > 1
            store.add_steps(ep, [StepRecord(i, OBS + f"(turn {i})", f"go to room {i % 6}", reward=0.0, done=i == n - 1,
                                            thought="Explore the next room.", info={"score": i},
                                            answered_by="expert" if role == "teacher" else model,
                                            prompt_tokens=0 if role == "teacher" else 400,
                                            completion_tokens=0 if role == "teacher" else 12)
                                 for i in range(n)])
            store.finish_episode(ep, success=role == "teacher" or e % 3 == 1, score=100.0 if role == "teacher" else 0.0)
            if role == "student":
                student_steps.append(ep)
            first.setdefault(role, ep)
        store.set_run_status(run, "done")
        first.setdefault("run", run)
    # one long episode: its transcript is paged
    long_run = store.create_run("bench-long", {}, kind="rollout")
    long_ep = store.start_episode(long_run, 0, tasks[("textworld", 0)], role="student", policy_id="llm:x", model="x")
    store.add_steps(long_ep, [StepRecord(i, OBS, f"look {i % 9}", answered_by="x") for i in range(2000)])
    store.finish_episode(long_ep, success=False)
    store.set_run_status(long_run, "done")
    # one model call per student step, in bulk (a quarter report cached prompt tokens)
    with store.engine.begin() as conn:
        rows = conn.exec_driver_sql("SELECT s.id, s.idx FROM steps s JOIN episodes e ON e.id = s.episode_id "
                                    "WHERE e.role = 'student' AND e.model = 'openai/gpt-4.1-mini'").fetchall()
        msgs = json.dumps([{"role": "system", "content": "You are an agent."}, {"role": "user", "content": OBS}])
        conn.exec_driver_sql(
            "INSERT INTO model_calls (step_id, model, messages, params, outputs, prompt_tokens, completion_tokens, cost, "
            "latency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(sid, "openai/gpt-4.1-mini", msgs,
              json.dumps({"n": 1, **({"cached_prompt_tokens": 256} if sid % 4 == 0 else {})}),
              json.dumps([f"Thought: go.\nAction: go to room {idx % 6}"]), 400, 12, 0.0002, 0.4) for sid, idx in rows])
    with store.session() as s, s.begin():
        s.add(Evaluation(name="bench", run_ids=[first["run"]], metrics={"note": "synthetic"}))
        ds = Dataset(name="bench-sft", kind="sft", path="/tmp/none", episode_ids=list(range(1, 2001)), n_rows=2000)
        s.add(ds)
        s.flush()
        ds_id = ds.id
    return {"run": first["run"], "student": first["student"], "teacher": first["teacher"], "long": long_ep,
            "dataset": ds_id, "fill_s": time.perf_counter() - t0, "model_calls": len(rows)}


def fetch(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
        assert r.status == 200, (url, r.status)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--db", help="keep the store here (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = args.db or str(Path(d) / "big.db")
        if Path(db).exists():
            raise SystemExit(f"{db} exists: give a new path")
        store = Store.open(db)
        ids = fill(store, args.steps)
        stats = store.stats()
        store.close()
        print(f"store: {stats['runs']} runs, {stats['episodes']} episodes, {stats['steps']} steps, "
              f"{stats['model_calls']} model calls ({Path(db).stat().st_size / 1e6:.0f} MB), filled in {ids['fill_s']:.0f} s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "agentdistill", "view", "--db", db, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise SystemExit("agentdistill view did not start")
                    time.sleep(0.2)
            pages = {
                "runs (newest first)": "/",
                "runs, env=textworld": "/?env=textworld",
                "runs, model=gpt-4.1": "/?model=gpt-4.1",
                "runs, kind=eval, page 2": "/?kind=eval&p=2",
                "run (per role, efficiency, episodes page 1)": f"/runs/{ids['run']}",
                "run, outcome=success, page 2": f"/runs/{ids['run']}?outcome=success&p=2",
                "episode transcript (student, 20 steps, calls)": f"/episodes/{ids['student']}",
                "episode transcript (2,000 steps), page 40": f"/episodes/{ids['long']}?p=40",
                "skills": "/skills",
                "evaluations": "/evaluations",
                "datasets": "/datasets",
                "dataset (2,000 episodes), page 1": f"/datasets/{ids['dataset']}",
            }
            print(f"{'page':48s} {'first (s)':>10s} {'median of 5 (s)':>16s}")
            for name, path in pages.items():
                cold = fetch(base + path)
                warm = statistics.median(fetch(base + path) for _ in range(5))
                print(f"{name:48s} {cold:10.3f} {warm:16.3f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
