"""OpenAI chat-format JSONL, as TRL's SFT reads it: one conversation per line.

`{"messages": [{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": ..., "tool_calls": [...],
"tool_call_id": ...}, ...], "tools": [...]}`. Tool call arguments may be JSON text (OpenAI's API) or an object
(TRL's datasets, `agentdistill db export --format chat`); content may be text or a list of parts. Optional keys
of a line: `id` (the conversation's own id; else the line's content hash identifies it), `task`, `model`,
`success`, `reward`, `score`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.importers.base import BadLine, Empty, Session, Turn, read_jsonl, text_of

FORMAT = "openai-chat"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def sniff(first: dict[str, Any]) -> bool:
    return isinstance(first.get("messages"), list)


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = []
    for c in message.get("tool_calls") or []:
        function = c.get("function") if isinstance(c.get("function"), dict) else c  # TRL sometimes drops the wrapper
        calls.append({"id": c.get("id"), "name": function.get("name") or "function",
                      "arguments": function.get("arguments") if function.get("arguments") is not None else {}})
    if isinstance(message.get("function_call"), dict):  # the API's older single function call
        fc = message["function_call"]
        calls.append({"id": None, "name": fc.get("name") or "function", "arguments": fc.get("arguments") or {}})
    return calls


def _session(n: int, line: dict[str, Any], path: Path) -> Session | BadLine:
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        return BadLine(n, "no `messages` list")
    own_id = line.get("id")
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:32]
    session = Session(external_id=str(own_id) if own_id not in (None, "") else digest,
                      task=str(line.get("task") or path.stem), model=line.get("model"), lines=[n, n],
                      replaceable=own_id not in (None, ""))
    if isinstance(line.get("tools"), list):
        session.tools = line["tools"]
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _ROLES:
            return BadLine(n, f"messages[{i}]: {'no role' if role is None else f'unknown role {role!r}'}")
        text = text_of(m.get("content"))
        if role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning") or m.get("thinking")
            session.assistant(text, _calls(m), reasoning if isinstance(reasoning, str) else None,
                              Turn(model=line.get("model"), lines=[n]))
        elif role in ("tool", "function"):
            session.tool(m.get("tool_call_id"), text, m.get("name"))
        elif role in ("system", "developer"):
            session.system(text)
        else:
            session.user(text)
    if not session.turns:
        return BadLine(n, "no assistant message")
    if isinstance(line.get("success"), bool):
        session.success = line["success"]
    for key in ("reward", "score"):
        if isinstance(line.get(key), (int, float)) and not isinstance(line.get(key), bool):
            setattr(session, key, float(line[key]))
    return session


def parse(path: Path) -> Iterator[Session | BadLine]:
    found = False
    for entry in read_jsonl(path):
        if isinstance(entry, BadLine):
            yield entry
            continue
        item = _session(*entry, path)
        found = found or isinstance(item, Session)
        yield item
    if not found:
        raise Empty("no conversation")
