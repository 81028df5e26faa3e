"""Import speed: steps per second that `agentdistill import` stores, on SQLite.

Two workloads, built from the records of the real files in tests/data/import/:
- one long Claude Code session (`--turns` agent turns, each a text + tool_use response and its tool_result,
  records linked by uuid/parentUuid as Claude Code writes them);
- an OpenAI chat JSONL of `--chats` conversations of 3 tool-using turns each.
Each is imported into a fresh store (the whole file in one transaction), then imported again (nothing added:
the idempotency check alone). litellm's price map is loaded before timing (a one-off of the process).
Run: python benchmarks/import_speed.py [--turns 2000] [--chats 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.importers import import_files  # noqa: E402
from agentdistill.models.cost import resolve_price  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "import"


def claude_session(path: Path, turns: int) -> None:
    records = [json.loads(line) for line in (DATA / "claude-code-session.jsonl").read_text().splitlines()]
    first_user, text, tool_use, result = records[2], records[5], records[6], records[7]
    out, parent = [first_user], first_user["uuid"]
    for i in range(turns):
        mid, call = f"msg_{i}", f"toolu_{i}"
        t = {**text, "uuid": str(uuid.uuid4()), "parentUuid": parent,
             "message": {**text["message"], "id": mid, "content": [{"type": "text", "text": f"Step {i}: listing."}]}}
        u = {**tool_use, "uuid": str(uuid.uuid4()), "parentUuid": t["uuid"],
             "message": {**tool_use["message"], "id": mid, "content": [
                 {"type": "tool_use", "id": call, "name": "Bash", "input": {"command": f"ls dir{i}"}}]}}
        r = {**result, "uuid": str(uuid.uuid4()), "parentUuid": u["uuid"], "message": {"role": "user", "content": [
            {"tool_use_id": call, "type": "tool_result", "content": f"file{i}.txt\n" * 20}]}}
        out += [t, u, r]
        parent = r["uuid"]
    path.write_text("".join(json.dumps(r) + "\n" for r in out))


def chat_file(path: Path, chats: int) -> None:
    with path.open("w") as f:
        for i in range(chats):
            messages = [{"role": "user", "content": f"Task {i}: find the notes."}]
            for k in range(3):
                messages += [{"role": "assistant", "content": "", "tool_calls": [{"id": f"c{k}", "type": "function",
                              "function": {"name": "bash", "arguments": json.dumps({"command": f"ls {k}"})}}]},
                             {"role": "tool", "tool_call_id": f"c{k}", "content": f"notes{i}-{k}.txt\n" * 10}]
            messages.append({"role": "assistant", "content": f"Found notes{i}."})
            f.write(json.dumps({"messages": messages}) + "\n")


def measure(name: str, path: Path, fmt: str, tmp: Path) -> None:
    store = Store.open(str(tmp / f"{fmt}.db"))
    t0 = time.perf_counter()
    [report] = import_files(store, [path], fmt=fmt).files
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    [again] = import_files(store, [path], fmt=fmt).files
    second = time.perf_counter() - t0
    assert report.steps and not report.error and again.added == 0
    mb = path.stat().st_size / 2**20
    print(f"{name:<22} {report.added:>6} sessions {report.steps:>7} steps  {mb:6.1f} MB  "
          f"import {first:6.2f} s = {report.steps / first:8.0f} steps/s   again (adds 0) {second:5.2f} s")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=2000)
    ap.add_argument("--chats", type=int, default=2000)
    args = ap.parse_args()
    resolve_price("claude-sonnet-4-5", None)  # litellm's import and price map: once per process, not per file
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        claude_session(tmp / "session.jsonl", args.turns)
        chat_file(tmp / "chats.jsonl", args.chats)
        measure("claude-code (1 long)", tmp / "session.jsonl", "claude-code", tmp)
        measure("openai-chat (many)", tmp / "chats.jsonl", "openai-chat", tmp)


if __name__ == "__main__":
    main()
