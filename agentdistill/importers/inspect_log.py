"""Inspect AI logs (`.eval`, or the older `.json`), read through inspect_ai's own reader.

Each sample (and epoch) is a session: its messages are the conversation; its model events say, for each
assistant message they produced (matched by message id), which model answered, the tokens and the time, and
which tools were offered. Assistant messages no model event produced (a prefilled dataset input) are context.
Its first score is its outcome: `score` as inspect_ai's `value_to_float` reads it (C = 1, I = 0, P = 0.5),
success when that is 1. A sample that ended in an error is imported with status `error`. A sample inspect_ai
cannot read is reported as `sample ID (epoch N)` and left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentdistill.importers.base import BadLine, Empty, ImportFileError, Session, Turn, parse_time

FORMAT = "inspect"


def sniff(first: dict[str, Any]) -> bool:  # a JSON log's top level (an .eval file is a zip, found by its suffix)
    return isinstance(first.get("eval"), dict) and "version" in first


def _inspect():
    try:
        import inspect_ai.log as log
        from inspect_ai.scorer import value_to_float
    except ImportError:
        raise ImportFileError("Inspect logs are read with inspect_ai's own reader: pip install inspect-ai") from None
    return log, value_to_float()


def _tools(tools: list[Any]) -> list[dict[str, Any]] | None:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters.model_dump(exclude_none=True)}}
            for t in tools] or None


def _text(content: Any) -> tuple[str, str | None]:
    """(text, reasoning) of a message's content: a string, or inspect_ai's content parts."""
    if isinstance(content, str):
        return content, None
    text, reasoning = [], []
    for part in content or []:
        kind = getattr(part, "type", None)
        if kind == "text":
            text.append(part.text)
        elif kind == "reasoning":
            reasoning.append(getattr(part, "reasoning", None) or getattr(part, "summary", None) or "")
        else:
            text.append(f"[{kind or 'part'}]")
    return "\n".join(text), "\n".join(r for r in reasoning if r) or None


def _session(sample: Any, header: Any, to_float) -> Session:
    spec = header.eval
    calls = {}  # assistant message id -> its model event
    for event in sample.events or []:
        if getattr(event, "event", None) == "model" and event.output and event.output.choices:
            calls[event.output.choices[0].message.id] = event
    session = Session(
        external_id=sample.uuid or f"{spec.eval_id}/{sample.id}/{sample.epoch}",
        task=f"{spec.task}/{sample.id}", goal_is_task=True, model=spec.model, agent=f"inspect:{spec.task}",
        where=f"sample {sample.id} (epoch {sample.epoch})",
        meta={k: v for k, v in (("eval_id", spec.eval_id), ("run_id", spec.run_id), ("sample_id", str(sample.id)),
                                ("epoch", sample.epoch), ("target", sample.target),
                                ("limit", getattr(sample.limit, "type", None))) if v not in (None, "", [])})
    for m in sample.messages:
        text, reasoning = _text(m.content)
        if m.role == "system":
            session.system(text)
        elif m.role == "user":
            session.user(text)
        elif m.role == "tool":
            error = getattr(m, "error", None)
            session.tool(m.tool_call_id, f"[error] {error.message}" if error else text, m.function)
        elif m.role == "assistant":
            event = calls.get(m.id)
            turn = None
            if event is not None:
                usage = event.output.usage
                started, finished = parse_time(str(event.timestamp)), parse_time(str(event.completed or ""))
                turn = Turn(model=event.model,
                            prompt_tokens=(usage.input_tokens + (usage.input_tokens_cache_read or 0)
                                           + (usage.input_tokens_cache_write or 0)) if usage else 0,
                            completion_tokens=usage.output_tokens if usage else 0,
                            cached_tokens=usage.input_tokens_cache_read if usage else None,
                            cost=usage.total_cost if usage else None,
                            latency=event.working_time or ((finished - started).total_seconds()
                                                           if started and finished else 0.0),
                            info={"stop_reason": event.output.stop_reason})
                if session.tools is None and event.tools:
                    session.tools = _tools(event.tools)
            session.assistant(text, [{"id": c.id, "name": c.function, "arguments": c.arguments}
                                     for c in m.tool_calls or []], reasoning, turn,
                              context_only=bool(calls) and event is None)
    if sample.scores:
        score = next(iter(sample.scores.values()))
        if not isinstance(score.value, (dict, list)):
            session.score = to_float(score.value)
            session.reward = session.score
            session.success = session.score >= 1.0
    if sample.error is not None:
        session.status, session.error = "error", sample.error.message
    session.started_at, session.finished_at = parse_time(sample.started_at), parse_time(sample.completed_at)
    return session


def parse(path: Path) -> Iterator[Session | BadLine]:
    log, to_float = _inspect()
    try:
        header = log.read_eval_log(str(path), header_only=True)
        summaries = log.read_eval_log_sample_summaries(str(path))
    except Exception as e:  # a zip or JSON inspect_ai cannot read: inspect_ai's message says why
        raise ImportFileError(f"not an Inspect log inspect_ai can read ({type(e).__name__}: {e})") from None
    found = False
    for summary in summaries:
        try:
            sample = log.read_eval_log_sample(str(path), id=summary.id, epoch=summary.epoch, resolve_attachments=True)
        except Exception as e:
            yield BadLine(f"sample {summary.id} (epoch {summary.epoch})", f"unreadable ({type(e).__name__}: {e})")
            continue
        session = _session(sample, header, to_float)
        if session.turns:
            found = True
            yield session
    if not found:
        raise Empty("no sample with a model answer")
