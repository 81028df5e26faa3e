"""What every importer shares: a session in one shape, bad-line bookkeeping, and the steps a session becomes.

An importer reads one file and yields `Session`s (and `BadLine`s for what it could not read). A session is the
conversation as the model saw it, in OpenAI's chat format (the shape the gateway records and TRL reads):
`system`/`user` messages, `assistant` messages with `tool_calls` (arguments as JSON text) and
`reasoning_content`, and `tool` messages carrying `tool_call_id`. What the file says about each model call
(model, tokens, cost, time, source lines) sits beside its assistant message in `Session.turns`.

`steps_of` cuts a session into steps, one per assistant message the model gave (not those that are only context):
- `observation`: what came since the agent's last turn (the user's words, tool results), as text;
- `action`: the answer as text, each tool call written `name({...arguments})` (as the gateway writes it);
  `thought`: its reasoning; `raw_output`: its text; `next_observation`: what came back (tool results);
- `info.tool_calls`: each call's id, name and arguments, for matching the next turn offline;
- the step's model call: `outputs` = [the assistant message]; `messages` = the prompt. A session's prompts
  repeat each other (turn k's prompt is turn k-1's plus its answer and what came back), so storing each whole
  would make a long session's size quadratic (a 300-turn Claude Code session of 3 MB would take ~500 MB):
  only the messages new since the previous step are stored, with `params.continues = true`.
  `agentdistill.store.export.step_prompts` rebuilds every step's full prompt, whichever way it was stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agentdistill.errors import AgentDistillError
from agentdistill.store.store import StepRecord

# a bad-line report names at most this many lines per file; the rest are counted
MAX_BAD_LINES_KEPT = 50


class ImportFileError(AgentDistillError):
    """A file that cannot be imported at all (unreadable, not the format asked for): nothing of it is written.
    The message does not name the file (the report does); `where`: the line or place at fault, if one is."""

    def __init__(self, message: str, where: int | str | None = None):
        super().__init__(message)
        self.where = where


class Empty(ImportFileError):
    """A readable file that holds no session to import (e.g. Claude Code's title-only files): noted, not a failure."""


@dataclass
class BadLine:
    """Something in a file that could not be read: `where` is a line number (JSONL) or a place (`steps[3]`)."""

    where: int | str
    reason: str


@dataclass
class Turn:
    """What a file says about one model call (the assistant message it produced)."""

    model: str | None = None
    prompt_tokens: int = 0  # all input tokens, cached ones included
    completion_tokens: int = 0
    cached_tokens: int | None = None  # the share of prompt_tokens served from the provider's cache
    cost: float | None = None  # None: not in the file (estimated from litellm's prices)
    latency: float = 0.0
    lines: list[int] = field(default_factory=list)  # the file's lines behind it
    info: dict[str, Any] = field(default_factory=dict)  # format-specific extras (stop reason, ids)


@dataclass
class Session:
    """One agent session of a file, in OpenAI's chat format, with where it came from and how it ended."""

    external_id: str  # its id at its source (unique per source): importing it twice adds it once
    task: str  # the task's name (its env is the format): a project directory, an eval task, a file
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: dict[int, Turn] = field(default_factory=dict)  # index of an assistant message -> its call
    resets: list[int] = field(default_factory=list)  # indices where the model's context starts afresh (compaction)
    tools: list[dict[str, Any]] | None = None  # tool definitions offered, OpenAI format, when the file has them
    goal: str | None = None  # the user's first words
    goal_is_task: bool = False  # the task is this one prompt (an eval sample): its goal is the session's
    model: str | None = None
    agent: str | None = None  # e.g. "claude-code 2.1.197": the episode's policy id
    status: str = "done"  # or "error" (the file says the session failed)
    error: str | None = None
    success: bool | None = None
    reward: float = 0.0
    score: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lines: list[int] = field(default_factory=list)  # first and last line of the file it came from
    where: str | None = None  # or its place in the file, for formats without lines
    replaceable: bool = True  # an id of the source's own: a changed session replaces its earlier import
    meta: dict[str, Any] = field(default_factory=dict)  # kept in the episode's provenance

    # -- building the conversation ------------------------------------------------------------------------------
    def system(self, text: str) -> None:
        if text:
            self.messages.append({"role": "system", "content": text})

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        if self.goal is None and text.strip():
            self.goal = text.strip()

    def tool(self, call_id: str | None, text: str, name: str | None = None) -> None:
        message = {"role": "tool", "tool_call_id": call_id or "", "content": text}
        if name:
            message["name"] = name
        self.messages.append(message)

    def assistant(self, text: str, tool_calls: list[dict[str, Any]] | None = None, reasoning: str | None = None,
                  turn: Turn | None = None, context_only: bool = False) -> None:
        """`tool_calls`: [{"id", "name", "arguments"}] (arguments a dict or JSON text). `context_only`: an answer
        the model did not give here (history a compaction carried over, an example): context, not a step."""
        message: dict[str, Any] = {"role": "assistant", "content": text or ""}
        if tool_calls:
            message["tool_calls"] = [
                {"id": c.get("id") or "", "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                              else json.dumps(c["arguments"], ensure_ascii=False)}}
                for c in tool_calls]
        if reasoning:
            message["reasoning_content"] = reasoning
        if not context_only:
            self.turns[len(self.messages)] = turn or Turn()
        self.messages.append(message)

    def reset(self) -> None:
        """The model's context starts afresh at the next message (a compaction: the summary, then what follows)."""
        self.resets.append(len(self.messages))

    def digest(self) -> str:
        """The session's content: the same session read again (from another copy of the file, or with lines
        appended that add no message) has the same digest."""
        return hashlib.sha256(json.dumps([self.messages, self.success, self.reward, self.score],
                                         sort_keys=True, default=str).encode()).hexdigest()


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]] | BadLine]:
    """(line number, object) for each JSON object line; a BadLine for each line that is not one."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise ImportFileError(f"cannot read ({e.strerror or e})") from None
    with f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                yield BadLine(n, "not UTF-8 text")
                continue
            except ValueError as e:  # json's message names the column: "Expecting value", "Unterminated string"
                msg = getattr(e, "msg", str(e)).removesuffix(" at")
                yield BadLine(n, f"not JSON: {msg}" + (f" (column {e.colno})" if hasattr(e, "colno") else ""))
                continue
            if isinstance(obj, dict):
                yield n, obj
            else:
                yield BadLine(n, f"a JSON {type(obj).__name__}, not an object")


def read_json(path: Path) -> Any:
    """A whole-file JSON document; a file that is not one fails with its first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ImportFileError(f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ImportFileError("not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ImportFileError(f"not JSON ({getattr(e, 'msg', e)})", getattr(e, "lineno", None)) from None


def text_of(content: Any) -> str:
    """A message content (a string, or a list of parts in OpenAI's or Anthropic's shape) as text; images and
    other non-text parts as `[image]`, `[document]`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict):
                text = p.get("text")
                if text is None and p.get("type") in ("tool_result", "function_call_output"):
                    text = text_of(p.get("content") or p.get("output"))
                parts.append(text if isinstance(text, str) else f"[{str(p.get('type') or 'part').split('_')[0]}]")
        return "\n".join(parts)
    return str(content)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 string or a Unix time (seconds or milliseconds), as an aware datetime; None if unreadable."""
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=timezone.utc)
        if isinstance(value, str) and value:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def arguments_of(call: dict[str, Any]) -> Any:
    """A stored tool call's arguments, parsed from JSON text where they are JSON."""
    args = (call.get("function") or {}).get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def render_call(call: dict[str, Any]) -> str:
    """A tool call as the action text: `name({...arguments})`, as the gateway writes it."""
    function = call.get("function") or {}
    return f"{function.get('name')}({function.get('arguments') or ''})"


def _observation(messages: list[dict[str, Any]]) -> str:
    """Messages other than the agent's own and the system prompt, as text (`[role id] text` each)."""
    return "\n\n".join(f"[{m['role']}{' ' + m['tool_call_id'] if m.get('tool_call_id') else ''}] "
                       f"{text_of(m.get('content'))}" for m in messages if m["role"] not in ("system", "assistant"))


def _tools_digest(tools: Any) -> str | None:
    return hashlib.sha256(json.dumps(tools, sort_keys=True).encode()).hexdigest()[:16] if tools else None


def steps_of(session: Session, prices: dict[str, Any] | None = None) -> list[StepRecord]:
    """The steps of a session, one per assistant message (see the module's docstring). `prices`: a cache of
    model -> price, for turns whose file gives no cost."""
    from agentdistill.models.cost import resolve_price

    prices = {} if prices is None else prices
    messages = session.messages
    assistants = sorted(session.turns)
    resets = sorted(set(session.resets))
    digest = _tools_digest(session.tools)
    steps: list[StepRecord] = []
    previous_end = 0  # the index after the previous assistant message
    for k, i in enumerate(assistants):
        turn = session.turns.get(i) or Turn()
        start = max([0, *(r for r in resets if r <= i)])
        continues = k > 0 and previous_end > start  # the previous answer is part of this prompt
        prompt = messages[previous_end:i] if continues else messages[start:i]
        following = assistants[k + 1] if k + 1 < len(assistants) else len(messages)
        reply = messages[i]
        calls = reply.get("tool_calls") or []
        model = turn.model or session.model or "unknown"
        cost = turn.cost
        if cost is None:
            if model not in prices:
                prices[model] = resolve_price(model, None) if model != "unknown" else None
            cost = prices[model].cost(turn.prompt_tokens, turn.completion_tokens) if prices[model] else 0.0
        params: dict[str, Any] = {"continues": True} if continues else {}
        if digest:
            params["tools_sha256"] = digest
            if not continues:  # in full at the start of each context, as the gateway stores a change of tools
                params["tools"] = session.tools
        if turn.cached_tokens is not None:
            params["cached_prompt_tokens"] = turn.cached_tokens  # read by the efficiency report
        info: dict[str, Any] = {
            "tool_calls": [{"id": c.get("id"), "name": (c.get("function") or {}).get("name"),
                            "arguments": (c.get("function") or {}).get("arguments")} for c in calls],
            **({"lines": turn.lines} if turn.lines else {}),
            **({"cost_estimated": True} if turn.cost is None else {}),
            **turn.info,
        }
        last = k == len(assistants) - 1
        text = text_of(reply.get("content"))
        steps.append(StepRecord(
            idx=k, observation=_observation(messages[previous_end:i]),
            action="\n".join(t for t in (text, *map(render_call, calls)) if t),
            thought=reply.get("reasoning_content"), raw_output=text,
            next_observation=_observation(messages[i + 1:following]) or None,
            reward=session.reward if last else 0.0, done=last, info=info, answered_by=model,
            prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens, cost=cost,
            latency=turn.latency,
            calls=[{"model": model, "messages": prompt, "params": params, "outputs": [reply],
                    "prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens, "cost": cost,
                    "latency": turn.latency}]))
        previous_end = i + 1
    return steps
