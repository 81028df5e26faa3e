"""Offline induction of reusable procedures from successful trajectories (as Agent Workflow Memory's
workflows, Wang et al. 2024, without an LLM).

A log of what one run did ("solved in 9 actions: `open door to workshop` -> ...") does not transfer
to a task whose objects differ. Here each action is cut into a *frame*: its verb and connective words
are kept, the words that name things become typed placeholders (`take <thing> from <container>`,
`click(<element id>)`). Across the successful runs of a task family we then find:

- the procedure: the frame sequence most runs followed exactly, or else the frames most runs used,
  in their usual order, with how often each appeared;
- how the task's wording maps to commands: for each frame, the words of the task sentence that named
  its arguments ("recover the glove from the box" -> `take <thing> from <container>`), so an agent can
  translate instructions it has not seen;
- where placeholder values come from (the task text, or the observations).

The concrete runs stay as examples in references/.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from statistics import median

CONNECTIVES = {"from", "in", "into", "on", "onto", "with", "to", "at", "under", "over", "inside", "off", "up", "down",
               "out", "through", "for", "about"}
ARTICLES = {"the", "a", "an", "some"}
MOTION = {"go", "move", "walk", "teleport", "navigate"}
PLACING = {"put", "place", "set", "drop", "move", "pour", "stack"}
ROLE_AFTER = {"from": "container", "in": "container", "into": "container", "on": "surface", "onto": "surface",
              "inside": "container", "under": "surface", "with": "tool", "to": "target", "at": "target"}
STOPWORDS = ARTICLES | CONNECTIVES | {"and", "then", "that", "this", "is", "are", "it", "of", "you", "your", "if",
                                      "be", "sure", "make", "first", "next", "after", "once", "within", "all"}
_CALL = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.S)
_ARG = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|(-?\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Frame:
    template: str  # "take <thing> from <container>"
    values: tuple[str, ...]  # ("glove", "Canadian style box")


def _call_frame(name: str, args: str) -> Frame:
    """click('12') -> click(<element id>); fill('14', 'John') -> fill(<element id>, <text>)."""
    values, parts = [], []
    for i, m in enumerate(_ARG.finditer(args)):
        value = next(g for g in m.groups() if g is not None)
        values.append(value)
        role = "element id" if i == 0 and value.strip("'\"").isdigit() else ("text" if i else "value")
        parts.append(f"<{role}>")
    return Frame(f"{name}({', '.join(parts)})", tuple(values))


def frame(action: str) -> Frame:
    """An action's frame: verb and connectives kept, runs of naming words replaced by typed placeholders."""
    action = " ".join(action.split())
    call = _CALL.match(action)
    if call:
        return _call_frame(call.group(1), call.group(2))
    words = action.split(" ")
    if len(words) == 1:
        return Frame(action.lower(), ())
    out, values, run, prev = [words[0].lower()], [], [], None
    verb = words[0].lower()

    def close():
        nonlocal run
        if run:
            if prev is None:
                role = "direction" if verb in MOTION else "thing"
            elif prev in ("on", "onto") and verb not in PLACING:
                role = "target"  # focus on X, click on X
            else:
                role = ROLE_AFTER.get(prev, "thing")
            out.append(f"<{role}>")
            values.append(" ".join(run))
            run = []

    for w in words[1:]:
        lw = w.lower()
        if lw in CONNECTIVES or (lw in ARTICLES and not run):
            close()
            if lw in CONNECTIVES:
                out.append(lw)
                prev = lw
        else:
            run.append(w)
    close()
    return Frame(" ".join(out), tuple(values))


@dataclass
class Trajectory:
    task: str
    goal: str
    actions: list[str]
    observations: list[str]


@dataclass
class Workflow:
    task: str
    runs: int
    steps: list[tuple[str, int]]  # (frame template, runs using it)
    exact: int  # runs that followed `steps` exactly (0: a consensus of frequent frames)
    cues: dict[str, list[str]]  # frame template -> task words that named its arguments
    sources: dict[str, str]  # placeholder (template + slot) -> "the task text" | "the observations"
    examples: dict[str, list[str]]  # frame template -> example values


def _sentences(goal: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", goal) if s.strip()]


def _cue_words(sentences: list[str], start: int, values: tuple[str, ...]) -> tuple[list[str], int]:
    """Content words before the action's first argument in the first task sentence from `start` on that
    names it (instructions come in order: aligning monotonically keeps "deposit the glove" for the drop
    and "recover the glove" for the take), and where to search from for the next action."""
    if not values:
        return [], start
    named = [v.lower() for v in values]
    drop = set(" ".join(named).split())
    for i in range(start, len(sentences)):
        low = sentences[i].lower()
        if named[0] in low:
            words = re.findall(r"[a-z][a-z'-]+", low[: low.index(named[0])])
            return [w for w in words[-4:] if w not in STOPWORDS and w not in drop], i + 1
    return [], start


def induce(trajectories: list[Trajectory]) -> list[Workflow]:
    """One workflow per task family with at least one successful trajectory."""
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if t.actions:
            by_task[t.task].append(t)
    out = []
    for task, runs in sorted(by_task.items()):
        seqs = [[frame(a) for a in t.actions] for t in runs]
        templates = [tuple(f.template for f in seq) for seq in seqs]
        best, count = Counter(templates).most_common(1)[0]
        if count >= max(2, len(runs) / 2) or len(runs) == 1:
            steps = [(tpl, count) for tpl in best]
            exact = count
        else:  # no shared sequence: the frames most runs used, in their usual place
            used = Counter(tpl for seq in templates for tpl in set(seq))
            position: dict[str, list[float]] = defaultdict(list)
            for seq in templates:
                for i, tpl in enumerate(seq):
                    position[tpl].append(i / max(len(seq) - 1, 1))
            common = [tpl for tpl, n in used.items() if n >= max(2, 0.25 * len(runs))]
            steps = [(tpl, used[tpl]) for tpl in sorted(common, key=lambda t: median(position[t]))]
            exact = 0
        cues: dict[str, Counter] = defaultdict(Counter)
        from_goal: dict[str, list[bool]] = defaultdict(list)
        examples: dict[str, list[str]] = defaultdict(list)
        for t, seq in zip(runs, seqs):
            sentences, at = _sentences(t.goal), 0
            for f in seq:
                words, at = _cue_words(sentences, at, f.values)
                cues[f.template].update(words)
                for i, v in enumerate(f.values):
                    from_goal[f"{f.template}#{i}"].append(v.lower() in t.goal.lower())
                    if v not in examples[f.template] and len(examples[f.template]) < 4:
                        examples[f.template].append(v)
        sources = {k: ("the task text" if sum(v) >= len(v) / 2 else "the observations") for k, v in from_goal.items()}
        out.append(Workflow(task, len(runs), steps, exact,
                            {tpl: [w for w, _ in c.most_common(4)] for tpl, c in cues.items() if c},
                            sources, dict(examples)))
    return out


def render(workflows: list[Workflow]) -> str:
    """The Procedure section's body: each task family's workflow with placeholders."""
    parts = []
    for w in workflows:
        head = (f"**{w.task}** ({w.runs} successful runs; placeholders stand for what differs between them"
                + (f"; {w.exact} of {w.runs} runs followed exactly these steps):" if w.exact else
                   "; no single sequence was shared, so these are the steps most runs used, in their usual order):"))
        lines = [head]
        for i, (tpl, n) in enumerate(w.steps, 1):
            note = "" if w.exact else f" (in {n} of {w.runs} runs)"
            lines.append(f"{i}. `{tpl}`{note}")
        sources = sorted({(tpl.split("#")[0], src) for tpl, src in w.sources.items() if src == "the task text"})
        if sources:
            lines.append("Fill the placeholders of " + ", ".join(f"`{t}`" for t, _ in sources[:6])
                         + " with the names the task text uses; the others come from what you observe.")
        mapping = [(tpl, cues) for tpl, cues in w.cues.items() if cues]
        if mapping:
            lines.append("How the task's wording maps to commands:")
            for tpl, cues in sorted(mapping, key=lambda m: m[0]):
                example = ", ".join(w.examples.get(tpl, [])[:3])
                lines.append(f"- \"{' / '.join(cues)} ...\" -> `{tpl}`" + (f" (e.g. {example})" if example else ""))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render_examples(trajectories: list[Trajectory], limit: int = 20) -> str:
    """references/examples.md: concrete successful runs, the evidence behind the procedure."""
    blocks = []
    for t in trajectories[:limit]:
        steps = "\n".join(f"{i}. `{a}`" for i, a in enumerate(t.actions, 1))
        blocks.append(f"## {t.task}\nTask: {t.goal.strip()}\n\n{steps}")
    more = f"\n\n({len(trajectories) - limit} more runs not shown)" if len(trajectories) > limit else ""
    return "# Example runs\n\nSuccessful runs the procedure in SKILL.md was induced from.\n\n" + "\n\n".join(blocks) + more + "\n"
