"""What a recorded call becomes in the store: a step of its session, in one shape whichever API it came by.

A call record (plain JSON, as it is spooled) holds the request and the answer as the client's API shaped them.
The step stores them in OpenAI's chat format, the one TRL and the exporters read:
- the model call's `messages`: the whole conversation sent (Anthropic's `system` and content blocks translated by
  litellm's own adapter: `tool_use` -> `tool_calls`, `tool_result` -> `tool` messages); its `outputs`: the
  assistant message of each choice (`content`, `tool_calls`, `reasoning_content`); its `params`: the API, the
  sampling fields, and the tools offered (in full when they differ from the session's previous step, else only
  their digest: an agent such as Claude Code sends 60 kB of tool definitions with every call);
- the step's `observation`: what came since the agent's last turn (the user's words, tool results; not the system
  prompt, which is in the model call), as text;
  `action`: the answer as text, each tool call written `name({...arguments})`; `thought`: its reasoning;
  `raw_output`: its text; `info`: the tool calls, finish reason, API, route, stream, requested model, errors.
Every string is redacted and bounded as the store bounds step texts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentdistill.gateway.errors import ANTHROPIC
from agentdistill.store.store import MAX_FIELD_CHARS, StepRecord

_SAMPLING = ("temperature", "top_p", "top_k", "n", "max_tokens", "max_completion_tokens", "stop", "stop_sequences",
             "tool_choice", "response_format", "seed", "reasoning_effort", "thinking")


def text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text") or f"[{p.get('type', 'part')}]" if isinstance(p, dict) else str(p)
                         for p in content)
    return str(content)


def anthropic_answer_to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic response message as an OpenAI assistant message."""
    blocks = message.get("content") or []
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    calls = [{"id": b.get("id"), "type": "function",
              "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if b.get("type") in ("tool_use", "server_tool_use")]
    if calls:
        out["tool_calls"] = calls
    thinking = "".join(b.get("thinking") or "" for b in blocks if b.get("type") == "thinking")
    if thinking:
        out["reasoning_content"] = thinking
    return out


def assemble_anthropic_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message an Anthropic event stream delivered, as the non-streamed response would have been."""
    message: dict[str, Any] = {"type": "message", "role": "assistant", "content": [], "usage": {}}
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for e in events:
        kind = e.get("type")
        if kind == "message_start":
            message.update({k: v for k, v in (e.get("message") or {}).items() if k != "content"})
            message["usage"] = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            blocks[e.get("index", len(blocks))] = dict(e.get("content_block") or {})
        elif kind == "content_block_delta":
            block, delta = blocks.setdefault(e.get("index", 0), {"type": "text", "text": ""}), e.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = (block.get("text") or "") + (delta.get("text") or "")
            elif dtype == "input_json_delta":
                partial[e.get("index", 0)] = partial.get(e.get("index", 0), "") + (delta.get("partial_json") or "")
            elif dtype == "thinking_delta":
                block["thinking"] = (block.get("thinking") or "") + (delta.get("thinking") or "")
            elif dtype == "signature_delta":
                block["signature"] = delta.get("signature")
        elif kind == "message_delta":
            message.update({k: v for k, v in (e.get("delta") or {}).items() if v is not None})
            message["usage"] = {**message["usage"], **{k: v for k, v in (e.get("usage") or {}).items() if v is not None}}
    for i, raw in partial.items():
        try:
            blocks[i]["input"] = json.loads(raw) if raw.strip() else {}
        except ValueError:
            blocks[i]["input"] = {"_unparsed": raw}
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def render_call(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    return f"{function.get('name')}({function.get('arguments') or ''})"


def openai_shape(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None, list[dict[str, Any]]]:
    """(messages, tools, answers) of a call record in OpenAI's chat format."""
    request, response = record["request"], record.get("response") or {}
    if record["api"] != ANTHROPIC:
        answers = [_clean(c.get("message") or {}) for c in response.get("choices") or []]
        return list(request.get("messages") or []), request.get("tools"), answers
    from litellm.llms.anthropic.messages.adapters.transformation import LiteLLMAnthropicMessagesAdapter

    try:
        translated, _ = LiteLLMAnthropicMessagesAdapter().translate_anthropic_to_openai(
            {**request, "model": record.get("requested_model") or "claude"})
        messages, tools = translated["messages"], translated.get("tools")
    except Exception:  # a request litellm's adapter cannot read is kept as text rather than lost
        messages = ([{"role": "system", "content": text_of(request.get("system"))}] if request.get("system") else []) + [
            {"role": m.get("role"), "content": text_of(m.get("content"))} for m in request.get("messages") or []]
        tools = request.get("tools")
    return ([_clean(m) for m in messages], tools,
            [anthropic_answer_to_openai(response)] if response.get("content") is not None else [])


def _clean(message: Any) -> Any:
    """A message without the empty fields libraries add (`function_call: null`, `thinking_blocks: null`, ...)."""
    if not isinstance(message, dict):
        return message
    return {k: v for k, v in message.items() if v is not None or k == "content"}


def _bound(obj: Any, where: str, truncated: dict[str, int]) -> Any:
    """Every string in `obj` cut to the store's bound (tool arguments and content parts included)."""
    if isinstance(obj, str):
        if len(obj) <= MAX_FIELD_CHARS:
            return obj
        truncated[where] = len(obj)
        marker = f"\n[... truncated by agentdistill: {len(obj)} characters in all]"
        return obj[:MAX_FIELD_CHARS - len(marker)] + marker  # within the bound: the store does not cut it again
    if isinstance(obj, dict):
        return {k: _bound(v, f"{where}.{k}", truncated) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bound(v, f"{where}[{i}]", truncated) for i, v in enumerate(obj)]
    return obj


def tools_digest(tools: Any) -> str | None:
    return hashlib.sha256(json.dumps(tools, sort_keys=True).encode()).hexdigest()[:16] if tools else None


def step_of(record: dict[str, Any], idx: int, previous_tools: str | None) -> tuple[StepRecord, str | None]:
    """The step of a call record, and the digest of the tools it offered."""
    messages, tools, answers = openai_shape(record)
    request = record["request"]
    # what came since the agent's last turn: the user's words and tool results after its last assistant message
    # (the system prompt is in the model call, not repeated here)
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    observation = "\n\n".join(f"[{m.get('role')}{' ' + m['tool_call_id'] if m.get('tool_call_id') else ''}] "
                              f"{text_of(m.get('content'))}" for m in messages[last + 1:]
                              if m.get("role") not in ("system", "developer"))
    truncated: dict[str, int] = {}
    messages = _bound(messages, "messages", truncated)
    answers = _bound(answers, "outputs", truncated)
    digest = tools_digest(tools)
    params: dict[str, Any] = {"api": record["api"], "stream": bool(request.get("stream"))}
    params.update({k: request[k] for k in _SAMPLING if request.get(k) is not None})
    if digest:
        params["tools_sha256"] = digest
        if digest != previous_tools:
            params["tools"] = _bound(tools, "tools", truncated)
    if truncated:
        params["truncated"] = truncated
    first = answers[0] if answers else {}
    calls = first.get("tool_calls") or []
    text = text_of(first.get("content"))
    action = "\n".join([t for t in (text, *map(render_call, calls)) if t])
    response = record.get("response") or {}
    finish = ((response.get("choices") or [{}])[0].get("finish_reason") if record["api"] != ANTHROPIC
              else response.get("stop_reason"))
    info = {
        "api": record["api"], "route": record.get("route"), "stream": bool(request.get("stream")),
        "requested_model": record.get("requested_model"), "call_id": record["call_id"], "finish_reason": finish,
        "tool_calls": [{"id": c.get("id"), "name": (c.get("function") or {}).get("name"),
                        "arguments": (c.get("function") or {}).get("arguments")} for c in calls],
        **({"error": record["error"]} if record.get("error") else {}),
        **({"cascade": record["extra"]} if record.get("extra") else {}),
    }
    answered = record.get("answered_by")
    call = {"model": answered or record.get("upstream") or "unknown", "messages": messages, "params": params,
            "outputs": answers, "prompt_tokens": record.get("prompt_tokens", 0),
            "completion_tokens": record.get("completion_tokens", 0), "cost": record.get("cost", 0.0),
            "latency": record.get("latency", 0.0)}
    step = StepRecord(idx=idx, observation=observation, action=action, thought=first.get("reasoning_content"),
                      raw_output=text, info=info, answered_by=answered, prompt_tokens=record.get("prompt_tokens", 0),
                      completion_tokens=record.get("completion_tokens", 0), cost=record.get("cost", 0.0),
                      latency=record.get("latency", 0.0), calls=[call])
    return step, digest or previous_tools
