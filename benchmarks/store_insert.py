"""Store insert rate vs raw sqlite3 executemany into the same table, same rows.

Goals: ours / raw >= 0.5 and ours >= 20k steps/s. Also prints the runner's path (one committed
transaction per step, with a model call) for reference.
Run: python benchmarks/store_insert.py [--steps 200000]
"""

import argparse
import json
import os
import sqlite3
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.store.store import StepRecord, Store  # noqa: E402


def records(n: int) -> list[StepRecord]:
    obs = "This room is called the kitchen. In it, you see: a stove, a sink, a fridge, a table. " * 3
    return [
        StepRecord(i, obs, f"go to room {i % 7}", reward=float(i % 3), done=False, next_observation=obs,
                   thought="I should move on.", info={"score": i % 100, "won": False}, answered_by="expert")
        for i in range(n)
    ]


def setup(d: str, name: str) -> tuple[Store, int]:
    store = Store.open(os.path.join(d, name))
    run = store.create_run("bench", {})
    tid = store.task_id("scienceworld", "boil", 0, "test")
    return store, store.start_episode(run, 0, tid, role="teacher", policy_id="expert")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200_000)
    args = ap.parse_args()
    recs = records(args.steps)
    with tempfile.TemporaryDirectory() as d:
        store, ep = setup(d, "ours.db")
        t0 = time.perf_counter()
        store.add_steps(ep, recs)
        ours = time.perf_counter() - t0
        assert store.stats()["steps"] == args.steps
        store.close()

        raw_store, raw_ep = setup(d, "raw.db")  # same schema, created by our migrations
        path = raw_store.engine.url.database
        raw_store.close()
        cols = list(recs[0].row(raw_ep))
        sql = f"INSERT INTO steps ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        t0 = time.perf_counter()
        rows = []
        for r in recs:
            row = r.row(raw_ep)
            row["info"] = json.dumps(row["info"])
            rows.append(tuple(row.values()))
        conn.executemany(sql, rows)
        conn.commit()
        raw = time.perf_counter() - t0
        assert conn.execute("SELECT count(*) FROM steps").fetchone()[0] == args.steps
        conn.close()

        one_store, one_ep = setup(d, "one.db")
        call = {"model": "m", "messages": [{"role": "user", "content": "x" * 500}], "params": {}, "outputs": ["a"],
                "prompt_tokens": 100, "completion_tokens": 5, "cost": 0.0, "latency": 0.1}
        k = 2000
        t0 = time.perf_counter()
        for r in recs[:k]:
            r.calls = [call]
            one_store.add_step(one_ep, r)
        one = time.perf_counter() - t0
        one_store.close()

    print(f"steps: {args.steps}")
    print(f"agentdistill Store.add_steps   {args.steps / ours:10,.0f} steps/s")
    print(f"raw sqlite3 executemany        {args.steps / raw:10,.0f} steps/s")
    print(f"runner path (commit per step + model call) {k / one:,.0f} steps/s")
    print(f"ratio ours/raw = {raw / ours:.3f}   (goal >= 0.5)")
    print(f"ours >= 20k steps/s: {args.steps / ours >= 20_000}")


if __name__ == "__main__":
    main()
