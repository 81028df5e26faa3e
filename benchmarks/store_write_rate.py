"""Sustained store write rate to PostgreSQL from N concurrent writers, the way Ray env actors write.

Each writer is its own process with its own Store (as each actor on a cluster is) and plays the runner's
path: open an episode, commit each step in its own transaction together with one model-call row
(a step is committed before the next action), finish the episode; again and again for `--seconds`.
Goal: >= 2,000 steps/s in all, enough for 1,000 concurrent episodes at 2 steps/s each. The store writes a
step and its calls as one statement on PostgreSQL (Store.add_step), so this measures that statement.

Each writer count is measured `--rounds` times, the counts taking turns (the rates on a shared 2-core VM move
by a quarter between minutes): the median and the range of the rounds are printed, with the server connections
the writers held meanwhile (one per writer's store: a cluster run of 1,000 env actors needs 1,000, within the
server's max_connections).

The server is a throwaway one started here from the system's binaries (apt: postgresql) with its default
durability (fsync on, synchronous_commit on), or `--url` for an existing server.
Run: python benchmarks/store_write_rate.py [--writers 1,4,8,16] [--seconds 10] [--rounds 3] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.testing import PostgresUnavailable, throwaway_postgres  # noqa: E402
from ray_vs_local import positive_count, positive_counts  # noqa: E402 (this folder: the scripts' argument types)

OBS = "This room is called the kitchen. In it, you see: a stove, a sink, a fridge, a table. " * 3
CALL = {"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": OBS}], "outputs": ["go north"],
        "params": {"temperature": 0.0}, "prompt_tokens": 300, "completion_tokens": 5, "cost": 0.0001, "latency": 0.4}


def server_cpu(pid: int | None) -> float:
    """CPU seconds the PostgreSQL server has used: the postmaster, its live backends and the reaped ones."""
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def times(p, children):
        stat = Path(f"/proc/{p}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)) / tick

    total = times(pid, True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    total += times(entry.name, False)
            except (OSError, ValueError, IndexError):
                continue
    return total


def writer(url: str, run_id: str, index: int, ready, go, seconds: float, out) -> None:
    from agentdistill.store.store import StepRecord, Store

    store = Store.open(url, migrate_fresh=False)
    tid = store.task_id("scienceworld", "boil", index, "test")
    ready.put(index)
    go.wait()  # every writer imported and connected before the clock starts
    steps = episodes = 0
    end = time.time() + seconds
    plan = index * 1_000_000
    while time.time() < end:
        ep = store.start_episode(run_id, plan + episodes, tid, role="teacher", policy_id="llm")
        for i in range(10):
            store.add_step(ep, StepRecord(i, OBS, f"go to room {i}", reward=0.0, done=i == 9, next_observation=OBS,
                                          thought="I should move on.", info={"score": i}, answered_by="llm",
                                          prompt_tokens=300, completion_tokens=5, cost=0.0001, latency=0.4,
                                          calls=[CALL]))
            steps += 1
            if time.time() >= end:
                break
        store.finish_episode(ep, status="done", success=True)
        episodes += 1
    store.close()
    out.put(steps)


def measure(url: str, n: int, seconds: float, server_pid: int | None) -> tuple[float, float]:
    from agentdistill.store.store import Store

    store = Store.open(url)
    run_id = store.create_run(f"write-rate-{n}", {})
    store.close()
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=writer, args=(url, run_id, i, ready, go, seconds, out)) for i in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    cpu0 = server_cpu(server_pid)
    go.set()
    time.sleep(seconds / 2)
    held = connections(url)
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    time.sleep(0.5)  # backends exit and are reaped: their CPU time moves to the postmaster's children
    return total / seconds, server_cpu(server_pid) - cpu0, held


def connections(url: str) -> int:
    """Client connections to the store's database now, other than this one's."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writers", default=[1, 4, 8, 16], type=positive_counts, help="writer counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=positive_count, default=3, help="measurements per writer count, in turn")
    ap.add_argument("--url", default=None, help="an existing PostgreSQL database (default: a throwaway server)")
    args = ap.parse_args()
    counts = args.writers

    def run(url, pid):
        print(f"one transaction per step + a model-call row, {args.seconds:g} s per measurement, {args.rounds} rounds; "
              f"{os.cpu_count()} CPU cores shared by the writers and the server (and whatever else runs here)")
        found: dict[int, list[tuple[float, float, int]]] = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in counts:
                rate, cpu, held = measure(url, n, args.seconds, pid)
                found[n].append((rate, cpu / max(rate * args.seconds, 1) * 1000, held))
                print(f"  round {r + 1}, writers {n}: {rate:.0f} steps/s, server CPU "
                      f"{found[n][-1][1] if pid else float('nan'):.3f} ms/step, {held} connections", flush=True)
        print(f"{'writers':>8} {'steps/s median [range]':>24} {'vs goal 2000':>13} {'server CPU ms/step':>19} "
              f"{'steps/s per server core':>24} {'connections':>12}")
        for n in counts:
            rates = sorted(f[0] for f in found[n])
            per_step = statistics.median(f[1] for f in found[n])
            per_core = f"{1000 / per_step:.0f}" if pid and per_step > 0 else "-"
            span = f"{statistics.median(rates):.0f} [{rates[0]:.0f}, {rates[-1]:.0f}]"
            print(f"{n:>8} {span:>24} {statistics.median(rates) / 2000:>12.2f}x "
                  f"{per_step if pid else float('nan'):>19.3f} {per_core:>24} {max(f[2] for f in found[n]):>12}")

    if args.url:  # a remote server: its CPU cannot be read from here
        from agentdistill.errors import AgentDistillError

        from agentdistill.store.store import Store

        try:  # a server that does not answer, a bad URL: one line, before any table is printed
            Store.open(args.url).close()
        except AgentDistillError as e:
            raise SystemExit(f"--url: {e}") from None
        run(args.url, None)
    else:
        try:  # the server's default durability (fsync, synchronous_commit on): what a real store runs with
            with throwaway_postgres("bench", "bench", "max_connections=200") as (url, pid):
                run(url, pid)
        except (PostgresUnavailable, RuntimeError) as e:
            raise SystemExit(f"{e}: fix the local PostgreSQL, or pass --url") from None


if __name__ == "__main__":
    main()
