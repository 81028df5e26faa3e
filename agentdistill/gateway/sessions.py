"""Which session a call belongs to.

A session is named by the client: a path prefix (`/sessions/{id}/v1/...`: set it as the SDK's base URL, or
Claude Code's ANTHROPIC_BASE_URL), or the `X-Agentdistill-Session` header. Otherwise it is inferred from the
conversation: an agent sends its whole history on every call, so a call whose messages extend an earlier call's
messages followed by the answer it got continues that call's session; anything else starts a new one.

Inference compares a digest of each prefix of the conversation, not the JSON as sent: clients echo an answer
back with fields of their own (`cache_control`, `refusal`, `null` for `""`), so a message is reduced to what the
agent saw (its role, its text, its tool calls by name and arguments, its tool results). The digests live in
memory, bounded (the oldest forgotten): after a restart a conversation continues in a new session unless the
client names it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import OrderedDict
from typing import Any

from agentdistill.gateway.errors import ANTHROPIC, GatewayError
from agentdistill.importers.base import arguments_of

SESSION_HEADER = "x-agentdistill-session"
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_session_id(sid: str) -> str:
    if not _SESSION_ID.fullmatch(sid or ""):
        raise GatewayError(400, f"session id {sid[:40]!r}: use 1 to 128 letters, digits and . _ : @ - "
                                "(starting with a letter or digit)", param="session")
    return sid


def new_session_id() -> str:
    return uuid.uuid4().hex


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return "\n".join(_text(p.get("text") if isinstance(p, dict) and p.get("type") in ("text", "input_text", None)
                               else p.get("type") if isinstance(p, dict) else p) for p in content).strip()
    return str(content).strip()


def _openai_key(m: dict[str, Any]) -> list:
    calls = [[(c.get("function") or {}).get("name"), arguments_of(c)]
             for c in m.get("tool_calls") or [] if isinstance(c, dict)]
    role = "system" if m.get("role") == "developer" else m.get("role")
    return [role, _text(m.get("content")), calls]


def _anthropic_key(m: dict[str, Any]) -> list:
    content = m.get("content")
    if not isinstance(content, list):
        return [m.get("role"), _text(content), [], []]
    texts, calls, results = [], [], []
    for b in content:
        if not isinstance(b, dict):
            continue
        kind = b.get("type")
        if kind == "text":
            texts.append(b.get("text") or "")
        elif kind == "tool_use":
            calls.append([b.get("name"), b.get("input")])
        elif kind == "tool_result":
            results.append(_text(b.get("content")))
        elif kind not in ("thinking", "redacted_thinking"):  # clients may drop earlier thinking from the history
            texts.append(f"[{kind}]")
    return [m.get("role"), "\n".join(texts).strip(), calls, results]


def _digest(previous: str, key: list) -> str:
    return hashlib.sha256((previous + json.dumps(key, sort_keys=True, default=str)).encode()).hexdigest()


def prefix_digests(api: str, body: dict[str, Any]) -> list[str]:
    """One digest per prefix of the call's conversation (Anthropic's `system` is part of the first)."""
    if api == ANTHROPIC:
        root, key = _digest("", ["system", _text(body.get("system"))]), _anthropic_key
    else:
        root, key = "", _openai_key
    out, h = [], root
    for m in body.get("messages") or []:
        h = _digest(h, key(m) if isinstance(m, dict) else [str(m)])
        out.append(h)
    return out


def extended(api: str, digests: list[str], answer: dict[str, Any]) -> str:
    """The digest of the conversation followed by `answer` (an assistant message in the call's own API)."""
    return _digest(digests[-1] if digests else "", (_anthropic_key if api == ANTHROPIC else _openai_key)(answer))


class Conversations:
    """Digest of a conversation (a call's messages and the answer it got) -> its session, newest kept."""

    def __init__(self, max_entries: int = 200_000):
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def find(self, digests: list[str]) -> str | None:
        """The session whose answered conversation is the longest prefix of this one."""
        with self._lock:
            for h in reversed(digests):
                sid = self._seen.get(h)
                if sid is not None:
                    self._seen.move_to_end(h)
                    return sid
        return None

    def remember(self, digest: str, sid: str) -> None:
        with self._lock:
            self._seen[digest] = sid
            self._seen.move_to_end(digest)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
