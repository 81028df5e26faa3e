"""ATIF, Harbor's Agent Trajectory Interchange Format (v1.0 to v1.8): `trajectory.json`.

A trajectory is `{"schema_version": "ATIF-v1.x", "session_id", "trajectory_id", "agent": {"name", "version",
"model_name", "tool_definitions"}, "steps": [...], "final_metrics", "subagent_trajectories": [...]}`. A step
has a `source` (system, user or agent) and a `message` (text, or content parts since v1.6); an agent step
carries its own `reasoning_content`, `tool_calls` ({tool_call_id, function_name, arguments}), the
`observation` its calls got back ({results: [{source_call_id, content}]}) and `metrics` (prompt tokens, cached
tokens included; completion tokens; cost_usd). Agent steps marked `is_copied_context` (carried over from an
earlier trajectory) or `llm_call_count: 0` (a dispatch no model made) are kept as context, not as steps.
Embedded subagent trajectories are sessions of their own. A file holds one trajectory, a JSON list of them,
or one per line (JSONL); a step that cannot be read is reported as `steps[i]` and left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.importers.base import (
    BadLine,
    Empty,
    ImportFileError,
    Session,
    Turn,
    parse_time,
    read_json,
    read_jsonl,
    text_of,
)

FORMAT = "atif"


def sniff(first: dict[str, Any]) -> bool:
    return str(first.get("schema_version", "")).startswith("ATIF") or (
        isinstance(first.get("steps"), list) and isinstance(first.get("agent"), dict))


def _task(path: Path) -> str:
    """Harbor writes `<trial>/agent/trajectory.json`: the trial names the task; else the file does."""
    return path.parent.parent.name if path.parent.name == "agent" and path.parent.parent.name else path.stem


def _observation(session: Session, observation: Any) -> None:
    for result in (observation or {}).get("results") or []:
        if not isinstance(result, dict):
            continue
        text = text_of(result.get("content"))
        refs = result.get("subagent_trajectory_ref") or []
        if refs and not text:
            text = "[subagent " + ", ".join(str(r.get("session_id")) for r in refs if isinstance(r, dict)) + "]"
        if result.get("source_call_id"):
            session.tool(result["source_call_id"], text)
        else:  # the result of an action that is not a tool call (e.g. keystrokes sent to a terminal)
            session.user(text)


def _trajectory(doc: dict[str, Any], where: str, path: Path, parent_id: str | None = None
                ) -> Iterator[Session | BadLine]:
    agent = doc.get("agent") if isinstance(doc.get("agent"), dict) else {}
    own_id = doc.get("trajectory_id") or doc.get("session_id")
    external = f"{parent_id}/{own_id}" if parent_id else own_id
    task = _task(path)
    session = Session(external_id=str(external or ""), task=task, model=agent.get("model_name"),
                      goal_is_task=task != path.stem,  # a Harbor trial: one task, one instruction
                      agent=" ".join(str(p) for p in (agent.get("name"), agent.get("version")) if p) or "atif",
                      where=where.rstrip(".:") or None,
                      meta={k: v for k, v in (("schema_version", doc.get("schema_version")),
                                              ("session_id", doc.get("session_id")),
                                              ("continued_trajectory_ref", doc.get("continued_trajectory_ref")))
                            if v})
    if isinstance(agent.get("tool_definitions"), list):
        session.tools = agent["tool_definitions"]
    steps = doc.get("steps")
    if not isinstance(steps, list):
        yield BadLine(where, "no `steps` list")
        return
    times = []
    for i, step in enumerate(steps):
        at = f"{where}steps[{i}]" if where else f"steps[{i}]"
        if not isinstance(step, dict) or step.get("source") not in ("system", "user", "agent"):
            yield BadLine(at, "a step without source system, user or agent")
            continue
        text = text_of(step.get("message"))
        if parse_time(step.get("timestamp")):
            times.append(parse_time(step.get("timestamp")))
        if step["source"] == "system":
            session.system(text)
        elif step["source"] == "user":
            session.user(text)
        else:
            calls = []
            for c in step.get("tool_calls") or []:
                if isinstance(c, dict) and c.get("function_name"):
                    calls.append({"id": c.get("tool_call_id"), "name": c["function_name"],
                                  "arguments": c.get("arguments") if c.get("arguments") is not None else {}})
            metrics = step.get("metrics") if isinstance(step.get("metrics"), dict) else {}
            context = bool(step.get("is_copied_context")) or step.get("llm_call_count") == 0
            cost = metrics.get("cost_usd")
            turn = Turn(model=step.get("model_name") or agent.get("model_name"),
                        prompt_tokens=int(metrics.get("prompt_tokens") or 0),
                        completion_tokens=int(metrics.get("completion_tokens") or 0),
                        cached_tokens=metrics.get("cached_tokens"),
                        cost=float(cost) if isinstance(cost, (int, float)) else None,
                        info={"step_id": step.get("step_id"), "where": at})
            session.assistant(text, calls, step.get("reasoning_content"), turn, context_only=context)
        if step["source"] != "user" or step.get("observation"):
            _observation(session, step.get("observation"))
    session.started_at, session.finished_at = (min(times), max(times)) if times else (None, None)
    if not session.external_id:
        yield BadLine(where or "session_id", "no session_id or trajectory_id")
    elif session.turns:
        yield session
    for j, sub in enumerate(doc.get("subagent_trajectories") or []):
        if isinstance(sub, dict):
            yield from _trajectory(sub, f"{where}subagent_trajectories[{j}].", path, str(external))


def parse(path: Path) -> Iterator[Session | BadLine]:
    found = False
    if path.suffix == ".jsonl":
        docs: Iterator = ((entry if isinstance(entry, BadLine) else (f"{entry[0]}:", entry[1]))
                          for entry in read_jsonl(path))
    else:
        doc = read_json(path)
        if isinstance(doc, dict):
            docs = iter([("", doc)])
        elif isinstance(doc, list):
            docs = iter([(f"[{i}].", d) for i, d in enumerate(doc)])
        else:
            raise ImportFileError("not an ATIF trajectory (a JSON object with `steps`)")
    for entry in docs:
        if isinstance(entry, BadLine):
            yield entry
            continue
        where, doc = entry
        if not isinstance(doc, dict) or not sniff(doc):
            yield BadLine(where.rstrip(".:") or "(root)", "not an ATIF trajectory (no schema_version or steps)")
            continue
        for item in _trajectory(doc, where, path):
            found = found or isinstance(item, Session)
            yield item
    if not found:
        raise Empty("no trajectory with an agent step")
