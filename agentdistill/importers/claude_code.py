"""Claude Code sessions: `~/.claude/projects/<cwd-slug>/<session-id>.jsonl`.

Each line is one record: `user` (the user's words, or `tool_result` blocks coming back), `assistant` (a block of
the API's response: `text`, `thinking` or `tool_use`, with `usage` and the model; one response is written as
several lines sharing `message.id`), `attachment` (context Claude Code injected), `system`, `summary`,
`queue-operation` and others. Records link to their parent by `uuid`/`parentUuid`; a session that was rewound
or branched holds abandoned branches, so the conversation is the chain from the last message back to the root
(a compaction boundary links on through `logicalParentUuid`; a record lost to a bad line is bridged by the
record before it in the file). Subagents' records (`isSidechain`) are their own transcripts: a file of them
alone (`<session>/subagents/agent-*.jsonl`) is imported as its own session.

Not kept: attachments (skill and agent listings, file snapshots: Claude Code's context, not the user's or the
agent's words), synthetic assistant records (Claude Code's own placeholders, model `<synthetic>`), and the
system prompt and tool definitions (the file does not hold them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.importers.base import BadLine, Empty, ImportFileError, Session, Turn, parse_time, read_jsonl, text_of

FORMAT = "claude-code"
_MESSAGE_TYPES = ("user", "assistant")


def sniff(first: dict[str, Any]) -> bool:
    return "sessionId" in first or (first.get("type") in ("summary", "user", "assistant") and "uuid" in first)


def _chain(records: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """The records of the conversation's branch that ends last, root first."""
    by_uuid = {r["uuid"]: i for i, (_, r) in enumerate(records) if r.get("uuid")}
    messages = [i for i, (_, r) in enumerate(records) if r.get("type") in _MESSAGE_TYPES]
    if not messages:
        return []
    chain, seen, i = [], set(), messages[-1]
    while i is not None and i not in seen:
        seen.add(i)
        chain.append(i)
        record = records[i][1]
        parent = record.get("parentUuid") or record.get("logicalParentUuid")
        if parent is None:
            i = None
        elif parent in by_uuid:
            i = by_uuid[parent]
        else:  # the parent's line was unreadable: continue from the record before this one in the file
            i = next((j for j in range(i - 1, -1, -1) if records[j][1].get("uuid")), None)
    return [records[i] for i in reversed(chain)]


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):  # a bare string, as some records hold it
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _assistant(session: Session, group: list[tuple[int, dict[str, Any]]], since: Any) -> None:
    """One API response (its lines share message.id) as one assistant message."""
    blocks = [b for _, r in group for b in _blocks(r["message"].get("content"))]
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    thinking = "\n".join(b.get("thinking") or "" for b in blocks if b.get("type") == "thinking") or None
    calls = [{"id": b.get("id"), "name": b.get("name") or "tool", "arguments": b.get("input") or {}}
             for b in blocks if b.get("type") in ("tool_use", "server_tool_use")]
    message = group[-1][1]["message"]
    usage = message.get("usage") or {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0) + cached
    cost = [r.get("costUSD") for _, r in group if isinstance(r.get("costUSD"), (int, float))]  # older versions
    first, last = parse_time(since), parse_time(group[-1][1].get("timestamp"))
    turn = Turn(model=message.get("model"), prompt_tokens=prompt, completion_tokens=int(usage.get("output_tokens") or 0),
                cached_tokens=cached if usage else None, cost=cost[-1] if cost else None,
                latency=max(0.0, (last - first).total_seconds()) if first and last else 0.0,
                lines=[n for n, _ in group],
                info={k: v for k, v in (("message_id", message.get("id")), ("stop_reason", message.get("stop_reason")))
                      if v})
    session.assistant(text, calls, thinking, turn)
    session.model = session.model or message.get("model")


def _user(session: Session, record: dict[str, Any]) -> None:
    content = (record.get("message") or {}).get("content")
    if record.get("isCompactSummary"):
        session.reset()  # what the model sees from here on: the summary, then what follows
    if isinstance(content, list):
        words = []
        for b in content:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                text = text_of(b.get("content"))
                session.tool(b.get("tool_use_id"), f"[error] {text}" if b.get("is_error") else text)
            else:
                words.append(b)
        if words:
            session.user(text_of(words))
    elif content is not None:
        session.user(text_of(content))


def parse(path: Path) -> Iterator[Session | BadLine]:
    records: list[tuple[int, dict[str, Any]]] = []
    for item in read_jsonl(path):
        if isinstance(item, BadLine):
            yield item
            continue
        n, record = item
        if record.get("type") in _MESSAGE_TYPES and not isinstance(record.get("message"), dict):
            yield BadLine(n, f"a {record['type']} record without a message")
            continue
        records.append(item)
    if not records:
        raise ImportFileError("no Claude Code records in this file")
    main = [(n, r) for n, r in records if not r.get("isSidechain")]
    sidechain = not any(r.get("type") in _MESSAGE_TYPES for _, r in main)  # a subagent's own transcript
    chain = _chain(records if sidechain else main)
    if not chain:
        raise Empty("no user or assistant messages")
    first = next((r for _, r in chain if r.get("sessionId")), {})
    session_id = first.get("sessionId") or path.stem
    agent_id = next((r.get("agentId") for _, r in chain if r.get("agentId")), None)
    session = Session(
        external_id=f"{session_id}/{agent_id}" if sidechain and agent_id else session_id,
        task=Path(first.get("cwd") or path.parent.name).name or "claude-code",
        agent=f"claude-code {first['version']}" if first.get("version") else "claude-code",
        lines=[records[0][0], records[-1][0]],
        meta={k: v for k, v in (("cwd", first.get("cwd")), ("git_branch", first.get("gitBranch")),
                                ("sidechain", sidechain or None)) if v},
    )
    titles = [r.get("summary") for _, r in records if r.get("type") == "summary" and r.get("summary")]
    if titles:
        session.meta["title"] = titles[-1]
    skipped: dict[str, int] = {}
    group: list[tuple[int, dict[str, Any]]] = []
    since = None  # the time of the last record the agent answered
    for n, record in chain:
        kind = record.get("type")
        message_id = (record.get("message") or {}).get("id") if kind == "assistant" else None
        if group and (message_id is None or message_id != group[0][1]["message"].get("id")):  # a response ended
            _assistant(session, group, since)
            since, group = group[-1][1].get("timestamp"), []
        if kind == "assistant":
            if record["message"].get("model") == "<synthetic>" or record.get("isApiErrorMessage"):
                skipped["synthetic"] = skipped.get("synthetic", 0) + 1
                continue
            group.append((n, record))
        elif kind == "user":
            _user(session, record)
            since = record.get("timestamp")
        elif kind == "system" and record.get("subtype") == "compact_boundary":
            session.reset()
        else:
            skipped[kind or "?"] = skipped.get(kind or "?", 0) + 1
    if group:
        _assistant(session, group, since)
    times = [t for t in (parse_time(r.get("timestamp")) for _, r in chain) if t]
    session.started_at, session.finished_at = (min(times), max(times)) if times else (None, None)
    if skipped:
        session.meta["records_not_kept"] = skipped
    if not session.turns:
        raise Empty("no assistant message")
    yield session
