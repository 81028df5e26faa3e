"""Export episodes (with their steps and model calls) to JSONL or a Hugging Face `datasets` dataset, or as
TRL-ready chat JSONL (`export_chat`).

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


# ---- chat JSONL: one conversation per line, as TRL's SFTTrainer reads it ----------------------------------------
_CHAT_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content")


def step_prompts(steps: list[Any]) -> list[list[dict[str, Any]] | None]:
    """Each step's full prompt, from its first model call: stored whole (rollouts, the gateway), or as the messages
    new since the previous step (`params.continues`: imported sessions, whose prompts repeat each other). None for
    a step without a model call in chat format."""
    out: list[list[dict[str, Any]] | None] = []
    previous: list[dict[str, Any]] | None = None
    for st in steps:
        call = st.calls[0] if st.calls else None
        if call is None or not isinstance(call.messages, list):
            out.append(previous := None)
            continue
        answer = [o for o in (call.outputs or [])[:1] if isinstance(o, dict)]
        prompt = (previous or []) + call.messages if (call.params or {}).get("continues") else list(call.messages)
        out.append(prompt)
        previous = prompt + answer
    return out


def _chat_message(m: dict[str, Any]) -> dict[str, Any]:
    """A stored message as chat templates read it: text content, tool call arguments as objects, `developer`
    as `system`."""
    from agentdistill.importers.base import arguments_of, text_of

    out = {"role": "system" if m.get("role") == "developer" else m.get("role"), "content": text_of(m.get("content"))}
    out.update({k: m[k] for k in _CHAT_KEYS[2:] if m.get(k) not in (None, "", [])})
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c.get("id"), "type": "function",
                              "function": {"name": (c.get("function") or {}).get("name"), "arguments": arguments_of(c)}}
                             for c in m["tool_calls"]]
    return out


def _session_chats(ep: Episode) -> list[dict[str, Any]]:
    """A recorded or imported session's conversations: one per context (a compaction starts another)."""
    chats: list[dict[str, Any]] = []
    conversation: list[dict[str, Any]] = []
    tools = None
    for st, prompt in zip(ep.steps, step_prompts(ep.steps), strict=True):
        if prompt is None:
            continue
        if len(prompt) < len(conversation):
            # the context shrank (a compaction, a retried turn): what came before is a conversation of its own.
            # A prompt as long that differs from it supersedes it (a client re-sends its history in its own words)
            chats.append({"messages": conversation, "tools": tools})
        tools = (st.calls[0].params or {}).get("tools", tools)
        answer = [o for o in (st.calls[0].outputs or [])[:1] if isinstance(o, dict)] or [
            {"role": "assistant", "content": st.raw_output or st.action}]
        conversation = prompt + answer
    if conversation:
        chats.append({"messages": conversation, "tools": tools})
    return chats


def _rollout_chat(ep: Episode) -> dict[str, Any]:
    """A rollout as one conversation, rendered as the LLM policy renders its prompts (train.data): the system
    prompt it was given (from its first model call, else the env's), the goal, then every turn."""
    from agentdistill.agents.policies import Turn, render_messages, system_message
    from agentdistill.envs.registry import env_class

    steps = sorted(ep.steps, key=lambda s: s.idx)
    first = next((c.messages for st in steps for c in st.calls if c.messages), None)
    system = first[0]["content"] if first and first[0].get("role") == "system" else None
    if system is None:
        try:
            system = system_message(env_class(ep.task.env))
        except Exception:  # an env not installed here: the conversation without its system prompt
            system = ""
    turns = [Turn(s.observation, s.action, s.thought) for s in steps]
    messages = render_messages(system, ep.task.goal or "", turns, None, len(turns))
    return {"messages": messages if system else messages[1:], "tools": None}


def chat_records(ep: Episode) -> list[dict[str, Any]]:
    """An episode's conversations as TRL-ready rows: `messages` (role, content, tool_calls with arguments as
    objects, tool_call_id) and `tools` (the tool definitions offered, where known)."""
    chats = _session_chats(ep) if ep.source else [_rollout_chat(ep)] if ep.steps else []
    out = []
    for chat in chats:
        row: dict[str, Any] = {"messages": [_chat_message(m) for m in chat["messages"]]}
        if chat.get("tools"):
            row["tools"] = chat["tools"]
        out.append(scrub(row))
    return out


def export_chat(store: Store, out: Path, run_id=None, role=None, status="done") -> int:
    """One conversation per line (`{"messages": [...], "tools": [...]}`); returns the number of lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    n = 0
    with tmp.open("w") as f:
        for ep in store.episodes(run_id=run_id, role=role, status=status, with_steps=True):
            for row in chat_records(ep):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    tmp.replace(out)
    return n
