"""Trace2Skill (arXiv 2603.25158): trajectories -> one skill pack, by parallel analysts and a patch merge.

One analyst per trajectory, all against the same frozen snapshot of the pack: a success analyst
(lean solution path, what made progress) for a successful episode, an error analyst (the root cause
of the failure, grounded in the steps) for a failed one. Each proposes a patch of edit operations
(skills/edits.py); the patches are merged hierarchically into one conflict-free, de-duplicated
patch, applied to the snapshot, validated, and stored as a new version with its provenance.

Analysts: an LLM (any model id: API, OpenAI-compatible server or local/) answering with a JSON list
of operations, or `trace`, a deterministic analyst that reads the same evidence directly from the
stored steps (score changes, invalid actions, the failing step, loops). Modes: create a pack from
a skeleton, or deepen the library's latest version of a skill.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.models import ChatModel
from agentdistill.skills import library
from agentdistill.skills.edits import Op, apply_patch, merge_patches
from agentdistill.skills.pack import SkillPack, check_name
from agentdistill.skills.workflow import Trajectory, frame, induce, render, render_examples
from agentdistill.store.models import Episode
from agentdistill.store.store import Store

log = logging.getLogger(__name__)

INVALID_MARKERS = ("No known action matches", "Unknown action", "is not a valid", "Nothing happens")


def rejected(step) -> bool:
    """The environment said, in its own words, that it could not carry out the step's action."""
    return any(m in (step.next_observation or "") for m in INVALID_MARKERS)


def short_text(text: str | None, n: int = 240) -> str:
    t = re.sub(r"\s+", " ", text or "").strip()
    return t if len(t) <= n else t[: n - 3] + "..."


def goal_line(ep: Episode) -> str:
    return short_text((ep.task.goal or ep.task.name).split(". ")[0], 160)


def render_trajectory(ep: Episode, obs_chars: int = 300) -> str:
    steps = sorted(ep.steps, key=lambda s: s.idx)
    outcome = "SUCCESS" if ep.success else "FAILURE"
    lines = [f"Task ({ep.task.env} / {ep.task.name}): {short_text(ep.task.goal, 600)}",
             f"Outcome: {outcome}, score {ep.score}, {len(steps)} steps"]
    for s in steps:
        score = (s.info or {}).get("score")
        lines.append(f"[{s.idx}] observation: {short_text(s.observation, obs_chars)}")
        lines.append(f"[{s.idx}] action: {s.action}" + (f"   (score after: {score})" if score is not None else ""))
    if steps:
        lines.append(f"final observation: {short_text(steps[-1].next_observation, obs_chars)}")
    return "\n".join(lines)


def skeleton(name: str, description: str, episodes: list[Episode]) -> SkillPack:
    goals = sorted({goal_line(e) for e in episodes})[:3]
    envs = sorted({e.task.env for e in episodes})
    title = name.replace("-", " ").capitalize()
    body = (f"# {title}\n\n{description}\n\n## When to use\n"
            + "\n".join(f"- Tasks like \"{g}\" ({', '.join(envs)})." for g in goals)
            + "\n\n## Procedure\n\n## Lessons from successes\n\n## Pitfalls\n")
    return SkillPack.new(name, description, body)


# ---- analysts -------------------------------------------------------------------------------------
class TraceAnalyst:
    """Deterministic analyst: every statement it adds points at a step of the trajectory."""

    id = "trace"

    async def analyze(self, kind: str, snapshot: SkillPack, ep: Episode) -> list[dict[str, Any]]:
        steps = sorted(ep.steps, key=lambda s: s.idx)
        if kind == "success":
            return self._success(ep, steps)
        return self._error(ep, steps)

    @staticmethod
    def _invalid(st) -> bool:
        """The env rejected the action (its own words), or, when it says nothing, it was not admissible."""
        if st.next_observation:
            return rejected(st)
        return (st.info or {}).get("matched_admissible") is False

    def _success(self, ep, steps) -> list[dict[str, Any]]:
        """What made progress, as frames (`take <thing> from <container>`) so the lesson transfers to
        variations with other objects. The procedure itself is induced across all successes at once
        (`induction_ops`), and this run becomes an example in references/."""
        prev, gains = 0.0, []
        for st in steps:
            score = (st.info or {}).get("score")
            if isinstance(score, (int, float)) and score > prev:
                gains.append(f"`{frame(st.action).template}`")
                prev = score
        if not gains:
            return []
        return [{"op": "append_to_section", "section": "Lessons from successes",
                 "text": "- Progress came from: " + ", ".join(dict.fromkeys(gains[:8])) + "."}]

    @staticmethod
    def induction_ops(episodes: list[Episode], snapshot: SkillPack) -> list[dict[str, Any]]:
        """Cross-trajectory step of the offline analyst: the common procedure of the successful runs
        with placeholders (skills/workflow.py) as the Procedure section, the runs as references/examples.md.
        Deepening re-induces them from the new evidence; the same evidence changes nothing."""
        wins = [ep for ep in episodes if ep.success]
        trajectories = []
        for ep in wins:
            steps = [st for st in sorted(ep.steps, key=lambda s: s.idx) if not TraceAnalyst._invalid(st)]
            trajectories.append(Trajectory(ep.task.name, ep.task.goal or ep.task.name, [st.action for st in steps],
                                           [st.observation for st in steps]))
        body = render(induce(trajectories))
        if not body:
            return []
        ops: list[dict[str, Any]] = []
        current = re.search(r"^## Procedure\n(.*?)(?=^## |\Z)", snapshot.body, re.S | re.M)
        current_text = current.group(1).strip() if current else ""
        if not current:
            ops.append({"op": "add_section", "section": "Procedure", "text": body, "after": "When to use"})
        elif not current_text:
            ops.append({"op": "append_to_section", "section": "Procedure", "text": body})
        elif current_text != body.strip():
            ops.append({"op": "replace_in_section", "section": "Procedure", "old": current_text, "new": body})
        examples = render_examples(trajectories)
        old = snapshot.files.get("references/examples.md")
        if old is not None and old.strip() != examples.strip():
            ops.append({"op": "delete_file", "file": "references/examples.md"})
        if old is None or old.strip() != examples.strip():
            ops.append({"op": "create", "file": "references/examples.md", "text": examples})
        return ops

    def _error(self, ep, steps) -> list[dict[str, Any]]:
        ops, where = [], f"(episode {ep.id}, {ep.task.name})"
        invalid = [st for st in steps if self._invalid(st)]
        if invalid:  # the same words from every episode, so the merge counts them as one lesson
            ops.append({"op": "append_to_section", "section": "Pitfalls",
                        "text": "- Reply with exactly one command in the environment's own form: free text and "
                                "unknown verbs are rejected and waste a step."})
        last = steps[-1] if steps else None
        if last is not None and last.done and not ep.success:
            ops.append({"op": "append_to_section", "section": "Pitfalls",
                        "text": f"- `{short_text(last.action, 80)}` ended the task as a failure {where}: "
                                f"\"{short_text(last.next_observation, 120)}\"."})
        run, longest = 1, (1, steps[0].action if steps else "")
        for a, b in zip(steps, steps[1:]):
            run = run + 1 if a.action == b.action else 1
            if run > longest[0]:
                longest = (run, b.action)
        if longest[0] >= 3:
            ops.append({"op": "append_to_section", "section": "Pitfalls",
                        "text": f"- Repeating `{short_text(longest[1], 80)}` {longest[0]} times in a row made no progress {where}."})
        if last is not None and not last.done:
            ops.append({"op": "append_to_section", "section": "Pitfalls",
                        "text": "- Failed episodes ran out of steps: follow the procedure above instead of "
                                "exploring."})
        return ops


ANALYST_PROMPT = """You improve an agent skill (a SKILL.md file) from one agent trajectory.
You are the {kind} analyst. {focus}
Propose edits as a JSON list of operations against the skill below, and nothing else. Operations:
{{"op": "append_to_section", "section": "<heading>", "text": "<markdown>"}}
{{"op": "insert_after", "anchor": "<existing line>", "text": "<markdown>"}}
{{"op": "insert_before", "anchor": "<existing line>", "text": "<markdown>"}}
{{"op": "replace_in_section", "section": "<heading>", "old": "<exact text>", "new": "<text>"}}
{{"op": "add_section", "section": "<new heading>", "text": "<markdown>"}}
{{"op": "delete_section", "section": "<heading>"}}
{{"op": "create", "file": "references/<name>.md", "text": "<markdown>"}}
{{"op": "delete_file", "file": "references/<name>.md"}}
Keep lessons general (not tied to this one variation), short, and grounded in the trajectory.

SKILL.md:
{skill}

Trajectory:
{trajectory}"""

FOCUS = {
    "success": "Extract the lean solution path (skip wasted steps) and the lessons that made it succeed.",
    "error": "Find the root cause of the failure: the first step that went wrong and why, citing the step.",
}


def parse_ops_json(text: str) -> list[dict[str, Any]]:
    """The JSON list of operations in a model's answer (fenced or bare); [] when there is none."""
    fenced = re.search(r"```(?:json)?\s*(\[.*?\])\s*```", text, re.S)
    candidates = [fenced.group(1)] if fenced else []
    if "[" in text and "]" in text:
        candidates.append(text[text.index("[") : text.rindex("]") + 1])
    for c in candidates:
        try:
            data = json.loads(c)
        except ValueError:
            continue
        if isinstance(data, list):
            return [d for d in data if isinstance(d, dict)]
    return []


class LLMAnalyst:
    def __init__(self, model: ChatModel, max_tokens: int = 1024, temperature: float = 0.0):
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.id = model.id
        self.cost = 0.0

    async def analyze(self, kind: str, snapshot: SkillPack, ep: Episode) -> list[dict[str, Any]]:
        prompt = ANALYST_PROMPT.format(kind=kind, focus=FOCUS[kind], skill=snapshot.files["SKILL.md"],
                                       trajectory=render_trajectory(ep))
        (c,) = await self.model.acomplete([{"role": "user", "content": prompt}], n=1,
                                         temperature=self.temperature, max_tokens=self.max_tokens)
        self.cost += c.cost
        return parse_ops_json(c.text)


# ---- the distiller --------------------------------------------------------------------------------
@dataclass
class Trace2SkillResult:
    version: library.Version
    proposed: int  # operations proposed by all analysts
    invalid: list[str] = field(default_factory=list)  # analyst outputs that were not valid operations
    dropped: list = field(default_factory=list)  # merge: duplicates and losing conflicts
    skipped: list = field(default_factory=list)  # apply: operations whose target was missing
    levels: int = 0


def _analyze_on_node(store_url: str, analyst_id: str, kind: str, snapshot: SkillPack, episode_id: int):
    """One analyst in a Ray task: (operations, its cost, where it ran, error). The episode is read from the
    store there; an LLM analyst's model is built there (`make_model` keeps one per worker process)."""
    from agentdistill.agents.ray_executor import where
    from agentdistill.store.store import Store

    store = Store.open(store_url, migrate_fresh=False, create=False)
    try:
        (ep,) = store.episodes(ids=[episode_id], with_steps=True)
        if analyst_id == TraceAnalyst.id:
            analyst = TraceAnalyst()
        else:
            from agentdistill.models import make_model

            analyst = LLMAnalyst(make_model(analyst_id))
        try:
            ops = asyncio.run(analyst.analyze(kind, snapshot, ep))
        except Exception as e:  # one analyst failing loses its patch, not the run
            return [], getattr(analyst, "cost", 0.0), where(), f"{type(e).__name__}: {short_text(str(e), 200)}"
        return ops, getattr(analyst, "cost", 0.0), where(), None
    finally:
        store.close()


def _analyze_on_cluster(cluster, analyst, snapshot: SkillPack, episodes: list[Episode]):
    from agentdistill.agents.ray_executor import fan_out

    found = fan_out(cluster, _analyze_on_node, [(cluster.store_url, analyst.id, "success" if ep.success else "error",
                                                 snapshot, ep.id) for ep in episodes])
    results, nodes = [], set()
    for i, (ops, cost, here, error) in enumerate(found):
        if isinstance(analyst, LLMAnalyst):
            analyst.cost += cost
        nodes.add(here["node"])
        results.append((i, ops, f"episode {episodes[i].id}: analyst failed: {error}" if error else None))
    return results, sorted(nodes)


async def _analyze_all(analyst, snapshot: SkillPack, episodes: list[Episode], concurrency: int):
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, ep: Episode):
        async with sem:
            kind = "success" if ep.success else "error"
            try:
                return i, await analyst.analyze(kind, snapshot, ep), None
            except Exception as e:  # one analyst failing loses its patch, not the run
                return i, [], f"episode {ep.id}: analyst failed: {type(e).__name__}: {short_text(str(e), 200)}"

    return await asyncio.gather(*(one(i, ep) for i, ep in enumerate(episodes)))


def distill(store: Store, episodes: list[Episode], *, name: str, analyst, description: str | None = None,
            mode: str = "create", concurrency: int = 8, run_id: str | None = None, cluster=None) -> Trace2SkillResult:
    """Analyse every trajectory (`concurrency` analysts at once, or one Ray task each on a `cluster`),
    merge their patches hierarchically, apply them to the snapshot and store the result as a version."""
    check_name(name)
    if not episodes:
        raise AgentDistillError("no trajectories to analyze: check the episode filters")
    if mode == "deepen":
        parent = library.get(store, name)
        snapshot, parent_id = parent.pack, parent.id
    elif mode == "create":
        tasks = sorted({e.task.name for e in episodes})
        description = description or (f"How to solve {', '.join(tasks[:4])} tasks in {episodes[0].task.env}, "
                                      f"distilled from {len(episodes)} agent trajectories.")
        snapshot, parent_id = skeleton(name, description, episodes), None
    else:
        raise ConfigError(f"unknown mode {mode!r}: use create or deepen")
    nodes: list[str] = []
    if cluster is not None:
        results, nodes = _analyze_on_cluster(cluster, analyst, snapshot, episodes)
    else:
        results = asyncio.run(_analyze_all(analyst, snapshot, episodes, concurrency))
    patches, invalid, proposed = [], [], 0
    for i, raw, error in sorted(results, key=lambda r: r[0]):
        if error:
            invalid.append(error)
            continue
        ops: list[Op] = []
        for d in raw:
            try:
                ops.append(Op.parse(d, source=i))
            except ConfigError as e:
                invalid.append(f"episode {episodes[i].id}: {e}")
        proposed += len(ops)
        patches.append(ops)
    merged = merge_patches(patches)
    ops = list(merged.ops)
    if isinstance(analyst, TraceAnalyst):  # an LLM analyst writes procedures itself; the offline one induces them
        ops += [Op.parse(d, source=len(episodes)) for d in TraceAnalyst.induction_ops(episodes, snapshot)]
    pack, skipped = apply_patch(snapshot, ops)
    runs = sorted({e.run_id for e in episodes})
    pack = pack.with_metadata(**{
        "distiller": "trace2skill", "analyst": analyst.id, "source-runs": ",".join(runs),
        "trajectories": str(len(episodes)), "successes": str(sum(bool(e.success) for e in episodes)),
    })
    metrics = {"proposed": proposed, "merged": len(merged.ops), "dropped": len(merged.dropped),
               "skipped": len(skipped), "invalid": len(invalid), "levels": merged.levels,
               "episodes": [e.id for e in episodes], "mode": mode}
    if isinstance(analyst, LLMAnalyst):
        metrics["analyst_cost"] = analyst.cost
    if nodes:
        metrics["ray_nodes"] = nodes  # where the analysts ran
    version = library.save(store, pack, distiller="trace2skill", run_id=run_id or (runs[0] if len(runs) == 1 else None),
                           parent_id=parent_id, metrics=metrics)
    return Trace2SkillResult(version, proposed, invalid, merged.dropped, skipped, merged.levels)
