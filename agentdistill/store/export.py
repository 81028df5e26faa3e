"""Export episodes (with their steps and model calls) to JSONL or a Hugging Face `datasets` dataset.

Files are written to a temporary name and renamed, so a failed export never leaves half a file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.errors import AgentDistillError
from agentdistill.secrets import scrub
from agentdistill.store.models import Episode
from agentdistill.store.store import Store


def episode_record(ep: Episode, with_calls: bool = True) -> dict[str, Any]:
    return {
        "episode_id": ep.id,
        "run_id": ep.run_id,
        "role": ep.role,
        "policy_id": ep.policy_id,
        "model": ep.model,
        "sampling": json.dumps(ep.sampling),
        "env": ep.task.env,
        "task": ep.task.name,
        "variation": ep.task.variation,
        "split": ep.task.split,
        "goal": ep.task.goal,
        "seed": ep.seed,
        "status": ep.status,
        "success": bool(ep.success),
        "score": ep.score,
        "reward": ep.reward,
        "n_steps": ep.n_steps,
        "prompt_tokens": ep.prompt_tokens,
        "completion_tokens": ep.completion_tokens,
        "cost": ep.cost,
        "wall_time": ep.wall_time,
        "error": ep.error,
        "steps": [
            {
                "idx": st.idx,
                "observation": st.observation,
                "action": st.action,
                "thought": st.thought,
                "raw_output": st.raw_output,
                "reward": st.reward,
                "done": st.done,
                "next_observation": st.next_observation,
                "answered_by": st.answered_by,
                "info": json.dumps(st.info),  # free-form: JSON text keeps the Arrow schema stable
                "prompt_tokens": st.prompt_tokens,
                "completion_tokens": st.completion_tokens,
                "cost": st.cost,
                "latency": st.latency,
                "calls": json.dumps(
                    [{"model": c.model, "messages": c.messages, "params": c.params, "outputs": c.outputs} for c in st.calls]
                )
                if with_calls
                else "[]",
            }
            for st in ep.steps
        ],
    }


def iter_records(store: Store, run_id: str | None, role: str | None, status: str | None) -> Iterator[dict[str, Any]]:
    for ep in store.episodes(run_id=run_id, role=role, status=status, with_steps=True):
        yield scrub(episode_record(ep))  # the store holds no secret; exports check again


def export_jsonl(store: Store, out: Path, run_id=None, role=None, status="done") -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    n = 0
    with tmp.open("w") as f:
        for rec in iter_records(store, run_id, role, status):
            f.write(json.dumps(rec) + "\n")
            n += 1
    tmp.replace(out)
    return n


def export_hf(store: Store, out: Path, run_id=None, role=None, status="done") -> int:
    try:
        import datasets
    except ImportError:
        raise AgentDistillError("export to Hugging Face datasets needs: pip install 'agentdistill[export]'") from None
    datasets.disable_progress_bars()
    records = list(iter_records(store, run_id, role, status))
    if not records:
        raise AgentDistillError("no episodes match: nothing exported (check --run/--role/--status)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return len(records)
