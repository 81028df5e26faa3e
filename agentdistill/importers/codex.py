"""Codex CLI rollouts: `~/.codex/sessions/YYYY/MM/DD/rollout-<time>-<session-id>.jsonl`.

Each line is `{"timestamp", "type", "payload"}`: `session_meta` (the session's id, cwd, CLI version and base
instructions), `turn_context` (the model of the turns that follow), `response_item` (the Responses API items of
the conversation: `message` of role user/developer/assistant, `reasoning`, `function_call` /
`custom_tool_call` / `local_shell_call` / `web_search_call` and their `*_output`), `event_msg` (UI events; its
`token_count` carries each response's usage), `token_usage_record` (the same usage, newer CLIs) and `compacted`
(the context replaced by a summary). Rollouts of older CLIs (before the typed lines) hold the session's metadata
on the first line and bare response items after it; both are read.

An agent turn is one response: the assistant-side items between two inputs (or two usage records).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.importers.base import BadLine, Empty, ImportFileError, Session, Turn, parse_time, read_jsonl, text_of

FORMAT = "codex"
_TYPED = {"session_meta", "response_item", "event_msg", "turn_context", "compacted", "token_usage_record"}
_AGENT_ITEMS = {"reasoning", "function_call", "custom_tool_call", "local_shell_call", "web_search_call",
                "tool_search_call", "image_generation_call"}
_OUTPUTS = {"function_call_output", "custom_tool_call_output", "local_shell_call_output", "tool_search_output",
            "mcp_tool_call_output"}


def sniff(first: dict[str, Any]) -> bool:
    if first.get("type") in _TYPED and "payload" in first:
        return True
    return "instructions" in first and "id" in first and "timestamp" in first  # an older CLI's first line


class _Reader:
    def __init__(self, path: Path):
        self.session = Session(external_id=path.stem.removeprefix("rollout-"), task="codex", agent="codex")
        self.group: list[tuple[int, dict[str, Any]]] = []  # the assistant items of the response being read
        self.model: str | None = None
        self.since: str | None = None  # time of the last input
        self.last_turn: Turn | None = None

    # -- one response, once its items are all read ------------------------------------------------------------
    def close(self, usage: dict[str, Any] | None = None) -> None:
        if not self.group:
            if usage and self.last_turn is not None and not self.last_turn.completion_tokens:
                self._usage(self.last_turn, usage)  # the usage of the response read last
            return
        text, reasoning, calls = [], [], []
        for _, item in self.group:
            kind = item.get("type")
            if kind == "message":
                text.append(text_of(item.get("content")))
            elif kind == "reasoning":
                parts = item.get("content") or item.get("summary") or []
                reasoning.append(text_of(parts))
            elif kind == "function_call":
                calls.append({"id": item.get("call_id") or item.get("id"), "name": item.get("name") or "function",
                              "arguments": item.get("arguments") or "{}"})
            elif kind == "custom_tool_call":  # a freeform tool (e.g. apply_patch): its input is text
                calls.append({"id": item.get("call_id") or item.get("id"), "name": item.get("name") or "custom",
                              "arguments": {"input": item.get("input") or ""}})
            elif kind == "local_shell_call":
                calls.append({"id": item.get("call_id") or item.get("id"), "name": "local_shell",
                              "arguments": item.get("action") or {}})
            else:  # server-side tools (web search): a call with no result line
                calls.append({"id": item.get("id"), "name": kind.removesuffix("_call"),
                              "arguments": item.get("action") or {}})
        first, last = parse_time(self.since), parse_time(self.group[-1][1].get("_timestamp"))
        turn = Turn(model=self.model, lines=[n for n, _ in self.group],
                    latency=max(0.0, (last - first).total_seconds()) if first and last else 0.0)
        if usage:
            self._usage(turn, usage)
        self.session.assistant("\n".join(t for t in text if t), calls, "\n".join(r for r in reasoning if r) or None,
                               turn)
        self.last_turn, self.group = turn, []

    @staticmethod
    def _usage(turn: Turn, usage: dict[str, Any]) -> None:
        turn.prompt_tokens = int(usage.get("input_tokens") or 0)  # OpenAI's input tokens include the cached ones
        turn.completion_tokens = int(usage.get("output_tokens") or 0)
        turn.cached_tokens = int(usage.get("cached_input_tokens") or 0)
        if usage.get("reasoning_output_tokens"):
            turn.info["reasoning_tokens"] = usage["reasoning_output_tokens"]

    # -- items --------------------------------------------------------------------------------------------------
    def meta(self, payload: dict[str, Any]) -> None:
        s = self.session
        s.external_id = str(payload.get("id") or s.external_id)
        if payload.get("cwd"):
            s.task = Path(payload["cwd"]).name or s.task
            s.meta["cwd"] = payload["cwd"]
        if payload.get("cli_version"):
            s.agent = f"codex {payload['cli_version']}"
        instructions = payload.get("base_instructions") or payload.get("instructions")
        s.system(text_of(instructions.get("text") if isinstance(instructions, dict) else instructions))
        for key in ("originator", "model_provider"):
            if payload.get(key):
                s.meta[key] = payload[key]

    def item(self, n: int, item: dict[str, Any], at: str | None) -> BadLine | None:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                self.group.append((n, {**item, "_timestamp": at}))
                return None
            self.close()
            text = text_of(item.get("content"))
            if role in ("developer", "system"):
                self.session.system(text)
            elif role == "user":
                self.session.user(text)
            else:
                return BadLine(n, f"a message of unknown role {role!r}")
            self.since = at
        elif kind in _AGENT_ITEMS:
            self.group.append((n, {**item, "_timestamp": at}))
        elif kind in _OUTPUTS:
            self.close()
            output = item.get("output")
            if isinstance(output, dict):  # {"content": ..., "success": ...} in some CLI versions
                output = output.get("content")
            self.session.tool(item.get("call_id"), text_of(output))
            self.since = at
        return None

    def compacted(self, payload: dict[str, Any]) -> None:
        """The context was replaced: by the items given, or by the summary alone."""
        self.close()
        self.session.reset()
        history = payload.get("replacement_history")
        if isinstance(history, list) and history:
            for item in history:
                if not isinstance(item, dict) or item.get("type") != "message":
                    continue
                text = text_of(item.get("content"))
                if item.get("role") == "assistant":
                    self.session.assistant(text, context_only=True)
                elif item.get("role") in ("developer", "system"):
                    self.session.system(text)
                else:
                    self.session.user(text)
        elif payload.get("message"):
            self.session.user(text_of(payload["message"]))


def parse(path: Path) -> Iterator[Session | BadLine]:
    reader = _Reader(path)
    lines: list[int] = []
    times = []
    for entry in read_jsonl(path):
        if isinstance(entry, BadLine):
            yield entry
            continue
        n, line = entry
        lines.append(n)
        kind, payload, at = line.get("type"), line.get("payload"), line.get("timestamp")
        if kind in _TYPED and not isinstance(payload, dict):
            yield BadLine(n, f"a {kind} line without a payload")
            continue
        if kind not in _TYPED:  # an older CLI: the session's metadata first, then bare response items
            if "instructions" in line and "id" in line and len(lines) == 1:
                kind, payload = "session_meta", line
            elif line.get("record_type") == "state":
                continue
            else:
                kind, payload = "response_item", line
        t = parse_time(at)
        if t:
            times.append(t)
        if kind == "session_meta":
            reader.meta(payload)
        elif kind == "turn_context":
            reader.model = payload.get("model") or reader.model
            reader.session.model = reader.session.model or reader.model
        elif kind == "response_item":
            bad = reader.item(n, payload, at)
            if bad:
                yield bad
        elif kind == "compacted":
            reader.compacted(payload)
        elif kind == "token_usage_record" and isinstance(payload.get("usage"), dict):
            reader.close(payload["usage"])
        elif kind == "event_msg" and payload.get("type") == "token_count":
            usage = (payload.get("info") or {}).get("last_token_usage")
            if isinstance(usage, dict):
                reader.close(usage)
        elif kind == "event_msg" and payload.get("type") == "turn_aborted":
            reader.session.meta["aborted"] = True
    reader.close()
    session = reader.session
    if not lines:
        raise ImportFileError("no Codex rollout lines in this file")
    if not session.turns:
        raise Empty("no model response")
    session.lines = [lines[0], lines[-1]]
    session.started_at, session.finished_at = (min(times), max(times)) if times else (None, None)
    yield session
