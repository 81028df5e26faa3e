"""Turn a model's free text into one environment action.

Small models wrap actions in quotes, backticks, markdown, numbering, trailing prose, or forget the
`Action:` prefix. We take the most plausible command line, clean it, and, when the env can list
admissible actions, snap it to the closest one.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

_ACTION = re.compile(r"^\s*(?:\**\s*)?action\s*(?:\d+\s*)?\**\s*[:=]\s*(.*)$", re.IGNORECASE)
_THOUGHT = re.compile(r"^\s*(?:\**\s*)?(?:thought|think|reasoning)\s*\**\s*[:=]\s*(.*)$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:observation|task|goal)\s*:", re.IGNORECASE)
_LEADING = re.compile(r"^(?:[-*>•]+\s*|\d+[.)]\s*|>\s*)+")
MAX_ACTION_CHARS = 200


@dataclass
class ParsedAction:
    action: str
    thought: str | None
    matched: bool = False  # snapped to an admissible action


def clean(text: str) -> str:
    text = _LEADING.sub("", text.strip())
    prev = None
    while prev != text:  # quotes, markdown and trailing punctuation nest in any order: peel to a fixpoint
        prev = text
        text = text.strip().strip("\"'`*<>").rstrip(".!;,")
        if text.startswith("[") and text.endswith("]"):  # a wrapped action; search[...] keeps its bracket
            text = text[1:-1]
    return re.sub(r"\s+", " ", text)[:MAX_ACTION_CHARS]


def _candidate_lines(text: str) -> tuple[str | None, str | None]:
    """(action text, thought text) from the raw output, before cleaning."""
    text = text.replace("```", "\n")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    thought = None
    for ln in lines:
        m = _THOUGHT.match(ln)
        if m and m.group(1).strip():
            thought = m.group(1).strip()
            break
    for ln in reversed(lines):  # the last Action: line wins (models often restate)
        m = _ACTION.match(ln)
        if m and m.group(1).strip():
            return m.group(1), thought
    for ln in lines:  # no label: the first line that is not a thought or a restated observation
        if not _THOUGHT.match(ln) and not _LABEL.match(ln):
            return ln, thought
    return None, thought


def verb(action: str) -> str:
    return action.split(" ", 1)[0].lower() if action else ""


def snap(action: str, admissible: list[str], cutoff: float = 0.6) -> str | None:
    """The admissible action closest to `action` with the same verb, or None. Snapping fixes spelling and
    argument wording; it must never change what the action does (`go to kitchen` is not `focus on
    kitchen`, ScienceWorld's irreversible answer): with no close action of the same verb, the model's
    action goes to the environment as written, and the environment rejects it."""
    if not admissible:
        return None
    lower = {a.lower(): a for a in admissible}
    if action.lower() in lower:
        return lower[action.lower()]
    same_verb = [a for a in lower if verb(a) == verb(action)]
    best = difflib.get_close_matches(action.lower(), same_verb, n=1, cutoff=cutoff)
    return lower[best[0]] if best else None


def parse_action(text: str, admissible: list[str] | None = None, cutoff: float = 0.6) -> ParsedAction:
    raw, thought = _candidate_lines(text or "")
    action = clean(raw) if raw else ""
    if admissible and action:
        snapped = snap(action, admissible, cutoff)
        if snapped is not None:
            return ParsedAction(snapped, thought, matched=True)
    return ParsedAction(action, thought)


_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.IGNORECASE)
MAX_CODE_CHARS = 20_000


def parse_code_action(text: str) -> ParsedAction:
    """The code of a code-acting env's action: the last fenced block (an unclosed one runs to the end),
    else what follows `Action:`; the thought as for commands."""
    text = text or ""
    _, thought = _candidate_lines(text)
    blocks = [b.strip("\n") for b in _CODE_BLOCK.findall(text) if b.strip()]
    if blocks:
        return ParsedAction(blocks[-1][:MAX_CODE_CHARS], thought)
    m = re.search(r"^\s*\**\s*action\s*\**\s*[:=][ \t]*(.*)\Z", text, re.S | re.I | re.M)
    code = m.group(1) if m else ("" if thought else text)
    return ParsedAction(code.strip()[:MAX_CODE_CHARS], thought)


def parse_for(env_cls: type, text: str, admissible: list[str] | None = None) -> ParsedAction:
    """Parse a model's output by the env's action format (one command line, or code)."""
    if env_cls.action_format == "code":
        return parse_code_action(text)
    return parse_action(text, admissible)


def majority(answers: list[str]) -> tuple[int, float]:
    """(index of a sample carrying the most common non-empty answer, share of all samples that give
    it). Empty answers (nothing parsable) never win and count against the share: (0, 0.0) if all empty."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return 0, 0.0
    best, n = counts.most_common(1)[0]
    return answers.index(best), n / len(answers)
