"""SPARK (arXiv 2605.09192): execute -> judge -> reflect -> retry per task, with an evolving exploration
memo and the Posterior Distillation Index (PDI) tracked online; successful runs are compiled into
evidence blocks and distilled into a SKILL.md.

Memo sections: Attempts Log, Commands, Verified Facts, Current Error Pattern, Next Strategy.

PDI (per reflect step t, after a failed attempt), as the paper's reference code defines it:
  exec  = how much of this attempt's commands the memo's Verified Facts absorbed
          (coverage: share of the facts' tokens found in the commands; or JS similarity)
  plan  = similarity of the previous and the new Next Strategy (stagnating plans score high)
  oss   = 0.5 * similarity(previous facts, new facts) + 0.5 * similarity(previous failures, new failures)
          (ossification: the memo no longer changes)
  raw   = z(exec) - z(plan) - z(oss), z-scored against every value so far (population std; a
          zero std gives 0); with one value only, raw = exec - plan - oss
  weighted = min(1, t / warmup) * raw
  An intervention fires when enabled, t >= 1 and weighted < threshold: "soft" (guidance added to
  the next attempt's prompt), "strong" when the previous step fired too (the stale Next Strategy is
  also withheld). Interventions never name the metric. observe-only: computed and stored, never
  injected. Similarities: "token_overlap" (Jaccard / coverage on word sets) or "js_divergence"
  (1 - JS divergence of Laplace-smoothed word distributions).
"""

from __future__ import annotations

import asyncio
import copy
import math
import queue
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from agentdistill.agents.runner import EnvPool, EpisodeSpec, Runner
from agentdistill.envs import Task, make
from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.models import ChatModel
from agentdistill.side_by_side import run_side_by_side
from agentdistill.skills import library
from agentdistill.skills.pack import SkillPack, check_name
from agentdistill.skills.trace2skill import rejected, short_text
from agentdistill.skills.workflow import Trajectory, induce, render
from agentdistill.store.models import Episode
from agentdistill.store.store import Store

SECTIONS = ("Attempts Log", "Commands", "Verified Facts", "Current Error Pattern", "Next Strategy")
JS_ALPHA = 0.002

SOFT_INTERVENTION = (
    "\nGuidance: your notes have stopped absorbing what the environment actually showed. Before acting, "
    "re-read the observations of the last attempt, keep only facts you saw confirmed, and change the "
    "approach where it failed.\n")
STRONG_INTERVENTION = (
    "\nGuidance: the previous plan has been repeated without progress. Discard it: start from the confirmed "
    "facts only, and try a clearly different approach at the step that failed.\n")


# ---- memo -----------------------------------------------------------------------------------------
def memo_section(memo: str, title: str) -> str:
    m = re.search(rf"### {re.escape(title)}\n([\s\S]*?)(?:\n### |\Z)", memo or "")
    return m.group(1).strip() if m else ""


def without_section(memo: str, title: str) -> str:
    out = re.sub(rf"\n?### {re.escape(title)}\n[\s\S]*?(?=\n### |\Z)", "\n", memo or "")
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def render_memo(sections: dict[str, str], n_attempts: int) -> str:
    parts = [f"## Exploration Memo ({n_attempts} failed attempt{'s' if n_attempts != 1 else ''})"]
    parts += [f"### {t}\n{sections.get(t, '').strip() or '-'}" for t in SECTIONS]
    return "\n\n".join(parts)


# ---- similarities ---------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def jaccard(a: str, b: str) -> float:
    sa, sb = set(words(a)), set(words(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def coverage(source: str, target: str) -> float:
    """Share of `target`'s words that appear in `source`."""
    src, tgt = set(words(source)), set(words(target))
    return len(src & tgt) / len(tgt) if tgt else 0.0


def js_similarity(a: str, b: str) -> float:
    vocab = sorted(set(words(a)) | set(words(b)))
    if len(vocab) < 2:
        return 0.0
    ca, cb = Counter(words(a)), Counter(words(b))
    pa = [ca.get(w, 0) + JS_ALPHA for w in vocab]
    pb = [cb.get(w, 0) + JS_ALPHA for w in vocab]
    sa, sb = sum(pa), sum(pb)
    p, q = [x / sa for x in pa], [x / sb for x in pb]
    m = [(x + y) / 2 for x, y in zip(p, q)]
    kl = lambda u, v: sum(x * math.log(x / y) for x, y in zip(u, v))  # noqa: E731
    return 1.0 - (0.5 * kl(p, m) + 0.5 * kl(q, m))


def failed_items(summary: str) -> set[str]:
    return {line.strip()[1:].strip() for line in (summary or "").splitlines() if line.strip().startswith("✗")}


# ---- PDI ------------------------------------------------------------------------------------------
@dataclass
class PDISnapshot:
    step: int
    proxy_exec: float
    proxy_plan: float
    proxy_oss: float
    raw_pdi: float
    weight: float
    weighted_pdi: float
    triggered: bool
    level: str | None  # "soft" | "strong" | None


@dataclass
class PDITracker:
    enabled: bool = False  # intervene
    observe_only: bool = False
    warmup: int = 2
    threshold: float = -0.5
    method: str = "token_overlap"  # or "js_divergence"
    history: list[PDISnapshot] = field(default_factory=list)
    _values: dict[str, list[float]] = field(default_factory=lambda: {"exec": [], "plan": [], "oss": []})

    def __post_init__(self):
        if self.method not in ("token_overlap", "js_divergence"):
            raise ConfigError(f"unknown PDI method {self.method!r}: use token_overlap or js_divergence")

    def compute(self, step: int, memo: str, previous_memo: str, commands: str, summary: str,
                previous_summary: str) -> PDISnapshot:
        js = self.method == "js_divergence"
        sim = js_similarity if js else jaccard
        facts = memo_section(memo, "Verified Facts")
        exec_ = (js_similarity(commands, facts) if js else coverage(commands, facts)) if facts else 0.0
        plan = sim(memo_section(previous_memo, "Next Strategy"), memo_section(memo, "Next Strategy")) if previous_memo else 0.0
        if previous_memo:
            facts_sim = sim(memo_section(previous_memo, "Verified Facts"), facts)
            cur, prev = failed_items(summary), failed_items(previous_summary)
            if js:
                fail_sim = js_similarity(" ".join(sorted(cur)), " ".join(sorted(prev))) if cur or prev else 0.0
            else:
                fail_sim = len(cur & prev) / len(cur | prev) if cur or prev else 0.0
            oss = 0.5 * facts_sim + 0.5 * fail_sim
        else:
            oss = 0.0
        for k, v in (("exec", exec_), ("plan", plan), ("oss", oss)):
            self._values[k].append(v)
        if len(self._values["exec"]) >= 2:
            raw = (self._z(exec_, self._values["exec"]) - self._z(plan, self._values["plan"])
                   - self._z(oss, self._values["oss"]))
        else:
            raw = exec_ - plan - oss
        weight = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        weighted = weight * raw
        triggered, level = False, None
        if self.enabled and step >= 1 and weight > 0 and weighted < self.threshold:
            triggered = True
            level = "strong" if self.history and self.history[-1].triggered else "soft"
        snap = PDISnapshot(step, exec_, plan, oss, raw, weight, weighted, triggered, level)
        self.history.append(snap)
        return snap

    @staticmethod
    def _z(value: float, values: list[float]) -> float:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return 0.0 if std == 0 else (value - mean) / std


def injection(memo: str, tracker: PDITracker, attempt: int, max_attempts: int) -> str:
    """What the next attempt's agent sees: the memo, and guidance when PDI fired (never its name)."""
    if not memo:
        return ""
    snap = tracker.history[-1] if tracker.history else None
    guidance = ""
    if snap is not None and snap.triggered and not tracker.observe_only:
        if snap.level == "strong":
            memo = without_section(memo, "Next Strategy")
            guidance = STRONG_INTERVENTION
        else:
            guidance = SOFT_INTERVENTION
    left = max_attempts - attempt
    return (f"Notes from your earlier attempts at this task (attempt {attempt + 1} of {max_attempts}, "
            f"{left} left):\n{memo}\n{guidance}")


# ---- judge and reflect ----------------------------------------------------------------------------
@dataclass
class Attempt:
    index: int
    episode_id: int
    status: str  # PASS | FAIL
    score: float | None
    commands: str
    summary: str  # judge's verdict, one "✓"/"✗" line per check
    steps: list = field(default_factory=list)


def judge(ep: Episode, index: int) -> Attempt:
    steps = sorted(ep.steps, key=lambda s: s.idx)
    lines = []
    if ep.success:
        lines.append(f"✓ task completed (score {ep.score})")
    else:
        lines.append(f"✗ task not completed (score {ep.score})")
        for st in steps:
            if rejected(st):
                lines.append(f"✗ rejected command: {short_text(st.action, 80)}")
        if steps and steps[-1].done:
            lines.append(f"✗ ended by: {short_text(steps[-1].action, 80)}")
        elif steps:
            lines.append("✗ step limit reached")
    return Attempt(index, ep.id, "PASS" if ep.success else "FAIL", ep.score,
                   "\n".join(s.action for s in steps), "\n".join(lines), steps)


class TraceReflector:
    """Rewrites the memo from the attempt's own evidence (no model): what ran, what the env confirmed."""

    id = "trace"

    async def reflect(self, memo: str, attempt: Attempt, goal: str) -> str:
        prev = {t: memo_section(memo, t) for t in SECTIONS}
        log = (prev["Attempts Log"] + "\n" if prev["Attempts Log"] not in ("", "-") else "") + \
            f"- #{attempt.index + 1}: {attempt.status}, score {attempt.score}, {len(attempt.steps)} steps"
        facts, last = [], 0.0
        for st in attempt.steps:  # verified: the environment's score rose after this command
            score = (st.info or {}).get("score")
            if isinstance(score, (int, float)) and score > last:
                facts.append(f"- `{st.action}` makes progress (score {last:g} -> {score:g})")
                last = score
        old_facts = [f for f in prev["Verified Facts"].splitlines() if f.startswith("- ")]
        facts = old_facts + [f for f in facts if f not in old_facts]
        errors = [line[1:].strip() for line in attempt.summary.splitlines() if line.startswith("✗")][1:]
        if facts:
            strategy = (f"Repeat the {len(facts)} confirmed step(s) first, then at the point where attempt "
                        f"#{attempt.index + 1} went wrong choose a different command.")
        else:
            strategy = "Explore with valid commands only (look around, open/go to rooms) until the score rises."
        return render_memo({
            "Attempts Log": log, "Commands": "\n".join(f"- {c}" for c in attempt.commands.splitlines()[-15:]),
            "Verified Facts": "\n".join(facts), "Current Error Pattern": "\n".join(f"- {e}" for e in errors[:5]),
            "Next Strategy": strategy}, attempt.index + 1)


REFLECT_PROMPT = """You are helping an agent that failed a task. Rewrite its exploration memo.
Keep exactly these sections (markdown headings `### <name>`): {sections}.
Verified Facts must only contain what the environment confirmed in the attempt below.

Task: {goal}

Previous memo:
{memo}

This attempt (#{n}, {status}, score {score}):
Commands:
{commands}
Judge:
{summary}

Reply with the new memo only."""


class LLMReflector:
    def __init__(self, model: ChatModel, max_tokens: int = 800):
        self.model, self.max_tokens, self.id = model, max_tokens, model.id
        self.fallback = TraceReflector()

    async def reflect(self, memo: str, attempt: Attempt, goal: str) -> str:
        prompt = REFLECT_PROMPT.format(sections=", ".join(SECTIONS), goal=goal, memo=memo or "(none)",
                                       n=attempt.index + 1, status=attempt.status, score=attempt.score,
                                       commands=attempt.commands, summary=attempt.summary)
        (c,) = await self.model.acomplete([{"role": "user", "content": prompt}], n=1, temperature=0.0,
                                         max_tokens=self.max_tokens)
        if all(f"### {t}" in c.text for t in SECTIONS):
            return c.text.strip()
        return await self.fallback.reflect(memo, attempt, goal)  # a reflection without the memo's shape


# ---- the loop -------------------------------------------------------------------------------------
@dataclass
class TaskOutcome:
    task: Task
    attempts: list[Attempt]
    memo: str
    pdi: list[PDISnapshot]

    @property
    def success(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].status == "PASS"


def set_context(policy, text: str | None) -> None:
    """Give the acting LLM (also inside a cascade) the memo as extra system context."""
    target = getattr(policy, "student", policy)
    if not hasattr(target, "context"):
        raise ConfigError("SPARK needs an LLM agent (policy llm or cascade) that can read its memo")
    target.context = text


def explore_task(store: Store, run_id: str, policy, pool: EnvPool, index: int, task: Task, *, max_attempts: int,
                 max_steps: int, pdi: str, pdi_method: str, reflector) -> TaskOutcome:
    """One task's execute -> judge -> reflect -> retry loop; attempt a is plan entry index * max_attempts + a."""
    tracker = PDITracker(enabled=pdi == "intervene", observe_only=pdi == "observe", method=pdi_method)
    memo, prev_summary, attempts = "", "", []
    for a in range(max_attempts):
        set_context(policy, injection(memo, tracker, a, max_attempts) or None)
        spec = EpisodeSpec(index * max_attempts + a, "student", task, 0)
        asyncio.run(Runner(store, run_id, {"student": policy}, {"student": max_steps})
                    .run([spec], pool, 1, progress=False))
        ep = store.episodes(ids=[store.episodes_by_plan(run_id)[spec.plan_index].id], with_steps=True)[0]
        attempt = judge(ep, a)
        attempts.append(attempt)
        if attempt.status == "PASS":
            store.set_episode_metrics(ep.id, {"spark": {"attempt": a, "status": "PASS", "memo": memo}})
            break
        new_memo = asyncio.run(reflector.reflect(memo, attempt, ep.task.goal or task.name))
        snap = tracker.compute(a, new_memo, memo, attempt.commands, attempt.summary, prev_summary)
        store.set_episode_metrics(ep.id, {"spark": {"attempt": a, "status": "FAIL", "memo": new_memo},
                                          "pdi": asdict(snap)})
        memo, prev_summary = new_memo, attempt.summary
    return TaskOutcome(task, attempts, memo, tracker.history)


def own_copy(policy):
    """A copy of a policy whose memo context is its own (its models, demo index and packs stay shared)."""
    mine = copy.copy(policy)
    if hasattr(mine, "student"):
        mine.student = copy.copy(mine.student)
    return mine


def _explore_on_node(store_url: str, policy_spec: dict, env_name: str, env_options: dict, run_id: str,
                     index: int, task: Task, options: dict) -> TaskOutcome:
    """One task explored in a Ray task: its own store connection, policy and env on whatever node runs it."""
    from agentdistill.agents.ray_executor import where
    from agentdistill.agents.rollout import build_policy
    from agentdistill.config import PolicySpec

    store = Store.open(store_url, migrate_fresh=False, create=False)
    pool = EnvPool(lambda: make(env_name, **env_options), 1, make(env_name, **env_options))
    try:
        policy = build_policy(PolicySpec.model_validate(policy_spec), store, env_name)
        outcome = explore_task(store, run_id, policy, pool, index, task, **options)
        by_plan = store.episodes_by_plan(run_id)
        here = where()
        for a in range(len(outcome.attempts)):
            store.set_episode_metrics(by_plan[index * options["max_attempts"] + a].id, {"ray": here})
        return outcome
    finally:
        pool.close()
        store.close()


def run_spark(store: Store, policy, env_name: str, tasks: list[Task], *, max_attempts: int = 3,
              max_steps: int = 30, pdi: str = "intervene", pdi_method: str = "token_overlap", reflector=None,
              env_options: dict | None = None, run_name: str = "spark", concurrency: int = 1,
              cluster=None, policy_spec: dict | None = None) -> tuple[str, list[TaskOutcome]]:
    """Explore every task. Tasks are independent (each has its own memo and PDI): up to `concurrency` of them
    run at once, each worker with its own env instance and its own copy of the policy, so their model calls
    meet in a batching backend; a task's attempts stay in order. With a Ray `cluster` (and the policy as a
    `policy_spec` the nodes can build), every task is a Ray task on the cluster instead."""
    if pdi not in ("off", "observe", "intervene"):
        raise ConfigError(f"unknown PDI mode {pdi!r}: use off, observe or intervene")
    if cluster is not None and policy_spec is None:
        raise ConfigError("SPARK on a Ray cluster needs the policy as a spec the nodes can build")
    reflector = reflector or TraceReflector()
    # an env that cannot start fails here, before a run is stored (on a cluster the nodes start their own)
    first = make(env_name, **(env_options or {})) if cluster is None else None
    run_id = store.create_run(run_name, {"spark": {"env": env_name, "tasks": [t.key for t in tasks],
                                                   "max_attempts": max_attempts, "pdi": pdi, "method": pdi_method,
                                                   "reflector": reflector.id, "policy": policy.id}}, kind="skill")
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(tasks):
        todo.put(item)
    options = dict(max_attempts=max_attempts, max_steps=max_steps, pdi=pdi, pdi_method=pdi_method, reflector=reflector)
    outcomes: dict[int, TaskOutcome] = {}
    errors: list[BaseException] = []

    def worker(mine, env=None) -> None:
        pool = None
        try:
            env = env or make(env_name, **(env_options or {}))
            pool = EnvPool(lambda: make(env_name, **(env_options or {})), 1, env)
            while not errors:
                try:
                    index, task = todo.get_nowait()
                except queue.Empty:
                    return
                outcomes[index] = explore_task(store, run_id, mine, pool, index, task, **options)
        except BaseException as e:  # the other workers finish their task in flight, then stop
            errors.append(e)
        finally:
            set_context(mine, None)
            if pool is not None:
                pool.close()

    workers = max(1, min(concurrency, len(tasks)))
    try:
        if cluster is not None:
            from agentdistill.agents.ray_executor import fan_out

            found = fan_out(cluster, _explore_on_node, [(cluster.store_url, policy_spec, env_name, dict(env_options or {}),
                                                         run_id, i, task, options) for i, task in enumerate(tasks)])
            outcomes.update(enumerate(found))
        elif workers == 1:
            worker(policy, first)
        else:
            run_side_by_side([lambda mine=own_copy(policy), env=(first if i == 0 else None): worker(mine, env)
                              for i in range(workers)])
        if errors:
            raise errors[0]
        store.set_run_status(run_id, "done")
    except BaseException:
        store.set_run_status(run_id, "error")
        raise
    return run_id, [outcomes[i] for i in range(len(tasks))]


# ---- distill --------------------------------------------------------------------------------------
def evidence_block(outcome: TaskOutcome) -> str:
    win = outcome.attempts[-1]
    facts = memo_section(outcome.memo, "Verified Facts")
    errors = memo_section(outcome.memo, "Current Error Pattern")
    return (f"### {outcome.task.name} (variation {outcome.task.variation}): PASS on attempt {win.index + 1} "
            f"of {len(outcome.attempts)}, score {win.score}\n"
            f"Commands that solved it:\n" + "\n".join(f"{i}. `{c}`" for i, c in enumerate(win.commands.splitlines(), 1))
            + (f"\nFacts verified before success:\n{facts}" if facts and facts != "-" else "")
            + (f"\nErrors overcome:\n{errors}" if errors and errors != "-" else ""))


def mean_pdi(outcomes: list[TaskOutcome]) -> float | None:
    values = [s.weighted_pdi for o in outcomes for s in o.pdi]
    return sum(values) / len(values) if values else None


def distill_spark(store: Store, outcomes: list[TaskOutcome], name: str, run_id: str, *,
                  description: str | None = None, summarizer: ChatModel | None = None) -> library.Version:
    """Successful runs -> evidence blocks -> SKILL.md (+ references/evidence.md), stored with PDI."""
    check_name(name)
    wins = [o for o in outcomes if o.success]
    if not wins:
        raise AgentDistillError("no task was solved within its attempts: nothing verified to distill "
                                "(raise --attempts or use a stronger agent)")
    blocks = [evidence_block(o) for o in wins]
    env = wins[0].task.env
    description = description or (f"Verified procedures for {', '.join(sorted({o.task.name for o in wins}))} in "
                                   f"{env}, distilled from {len(wins)} successful SPARK runs.")
    body = None
    if summarizer is not None:
        prompt = ("Write the body of a SKILL.md (markdown, starting with a `# ` title, with sections "
                  "`## When to use`, `## Procedure`, `## Pitfalls`) from this execution evidence only:\n\n"
                  + "\n\n".join(blocks))
        (c,) = asyncio.run(summarizer.acomplete([{"role": "user", "content": prompt}], n=1, temperature=0.0,
                                                max_tokens=1200))
        if c.text.strip().startswith("# ") and "## Procedure" in c.text:
            body = c.text.strip()
    if body is None:  # compile the evidence directly: the verified runs' common procedure, with placeholders
        goals = {e.id: e.task.goal or e.task.name for e in store.episodes(ids=[o.attempts[-1].episode_id for o in wins])}
        runs = [Trajectory(o.task.name, goals.get(o.attempts[-1].episode_id, o.task.name),
                           o.attempts[-1].commands.splitlines(), []) for o in wins]
        pitfalls = sorted({line for o in outcomes for line in memo_section(o.memo, "Current Error Pattern").splitlines()
                           if line.startswith("- ")})
        body = (f"# {name.replace('-', ' ').capitalize()}\n\n{description}\n\n## When to use\n"
                + "\n".join(sorted({f"- {o.task.name} tasks in {env}." for o in wins}))
                + "\n\n## Procedure\nInduced from the runs that passed verification:\n\n" + render(induce(runs))
                + "\n\n## Pitfalls\n" + ("\n".join(pitfalls) if pitfalls else "- None recorded before success.")
                + "\n\nThe evidence behind this skill (each passing run's commands) is in references/evidence.md.")
    pdi = mean_pdi(outcomes)
    pack = SkillPack.new(name, description, body, {
        "distiller": "spark", "source-runs": run_id, "pdi": "n/a" if pdi is None else f"{pdi:.4f}",
        "tasks-solved": f"{len(wins)}/{len(outcomes)}"})
    pack.files["references/evidence.md"] = "# Execution evidence\n\n" + "\n\n".join(blocks) + "\n"
    metrics = {"pdi_mean": pdi, "solved": len(wins), "tasks": len(outcomes),
               "pdi": {o.task.key: [asdict(s) for s in o.pdi] for o in outcomes},
               "interventions": sum(s.triggered for o in outcomes for s in o.pdi),
               "attempts": {o.task.key: len(o.attempts) for o in outcomes}}
    return library.save(store, pack, distiller="spark", run_id=run_id, metrics=metrics)
