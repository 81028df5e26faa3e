"""The gateway's HTTP app: OpenAI's Chat Completions and Anthropic's Messages, each call answered by the upstream
and recorded as a step of its session.

Routes (each also under `/sessions/{id}`, which names the session):
- `POST /v1/chat/completions`: OpenAI (streaming, tools/tool_calls, content parts, n, stop);
- `POST /v1/messages`: Anthropic (streaming events, tool_use/tool_result, system blocks); `/v1/messages/count_tokens`;
- `GET /v1/models`;
- `POST /sessions/{id}/outcome`: success, reward, score, feedback and tags for a session;
- `GET /health`, `GET /v1/agentdistill/status`: the upstream and the recorder's counts.

Every answer carries `X-Agentdistill-Session` (the session it was recorded in: an inferred one's id is how the
client attaches its outcome) and `X-Agentdistill-Answered-By`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request  # at module level: FastAPI reads the routes' annotations from here

from agentdistill.gateway.errors import (ANTHROPIC, OPENAI, GatewayError, api_of, error_body, error_response, one_line,
                                         upstream_failure)
from agentdistill.gateway.sessions import (SESSION_HEADER, Conversations, check_session_id, extended, new_session_id,
                                           prefix_digests)
from agentdistill.gateway.upstream import CALL_INFO, Upstream

log = logging.getLogger(__name__)

MAX_N = 16
_OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_ANTHROPIC_ROLES = {"user", "assistant", "system"}  # Claude Code sends system messages mid-conversation


class Gateway:
    """The upstream, the recorder (None: answer without recording) and the sessions inferred so far."""

    def __init__(self, upstream: Upstream, recorder=None):
        self.upstream, self.recorder = upstream, recorder
        self.conversations = Conversations()
        self.upstream_errors = 0

    def status(self) -> dict[str, Any]:
        recording = self.recorder.status() if self.recorder is not None else None
        healthy = recording is None or (recording["store"] == "ok" and not recording["dropped"])
        return {"status": "ok" if healthy else "degraded", "upstream": self.upstream.id,
                "upstream_errors": self.upstream_errors, "recording": recording}


# ---- checks of the input: a 400 naming the field ------------------------------------------------------------------

def _check_messages(body: dict[str, Any], roles: set[str]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "messages: send a non-empty list of messages", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise GatewayError(400, f"messages[{i}]: each message needs a role, one of {', '.join(sorted(roles))}",
                               param=f"messages[{i}]")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise GatewayError(400, f"messages[{i}].content: a string or a list of content parts",
                               param=f"messages[{i}].content")


def _check_openai(body: dict[str, Any]) -> None:
    _check_messages(body, _OPENAI_ROLES)
    n = body.get("n", 1)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N):
        raise GatewayError(400, f"n: an integer from 1 to {MAX_N}", param="n")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise GatewayError(400, "stop: a string or a list of strings", param="stop")
    _check_common(body)


def _check_anthropic(body: dict[str, Any]) -> None:
    _check_messages(body, _ANTHROPIC_ROLES)
    tokens = body.get("max_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise GatewayError(400, "max_tokens: a positive integer is required", param="max_tokens")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise GatewayError(400, "system: a string or a list of text blocks", param="system")
    _check_common(body)


def _check_common(body: dict[str, Any]) -> None:
    if not isinstance(body.get("stream", False), (bool, type(None))):
        raise GatewayError(400, "stream: true or false", param="stream")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise GatewayError(400, "tools: a list of tool definitions", param="tools")
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GatewayError(400, f"{field}: a number", param=field)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        raise GatewayError(400, "the request body is not JSON: send a JSON object") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object")
    return body


# ---- sessions -------------------------------------------------------------------------------------------------

def _resolve(gateway: Gateway, request: Request, path_sid: str | None, api: str, body: dict[str, Any]):
    """(session id, how it was named, the conversation's prefix digests when it was inferred)."""
    if path_sid is not None:
        return check_session_id(path_sid), "path", None
    header = request.headers.get(SESSION_HEADER)
    if header is not None:
        return check_session_id(header.strip()), "header", None
    digests = prefix_digests(api, body)
    found = gateway.conversations.find(digests)
    return (found, "inferred", digests) if found else (new_session_id(), "new", digests)


def _remember(gateway: Gateway, api: str, digests, answers: list[dict[str, Any]], sid: str) -> None:
    if digests is None:
        return
    for answer in answers:
        gateway.conversations.remember(extended(api, digests, answer), sid)


# ---- the app ----------------------------------------------------------------------------------------------------

def create_gateway_app(gateway: Gateway, api_keys: list[str] | None = None, max_request_bytes: int | None = None):
    """The FastAPI app. `api_keys`: every request must carry one (`Authorization: Bearer <key>` as OpenAI clients
    send it, or `x-api-key` as Anthropic's do), else 401 in the API's own shape."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse, StreamingResponse

    from agentdistill.secrets import register
    from agentdistill.serve import MAX_REQUEST_BYTES, _Guard

    for k in api_keys or []:
        register(k)

    @asynccontextmanager
    async def lifespan(_app):
        if gateway.recorder is not None:
            gateway.recorder.start()
        try:
            yield
        finally:
            if gateway.recorder is not None:
                await asyncio.to_thread(gateway.recorder.close)

    app = FastAPI(title="agentdistill gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, keys=[k.encode() for k in api_keys or []],
                       max_request_bytes=max_request_bytes or MAX_REQUEST_BYTES * 16)  # agents' histories are long
    upstream = gateway.upstream

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, e: GatewayError):
        return error_response(api_of(request.url.path), e.status, e.message, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no route {request.url.path}: the gateway serves /v1/chat/completions and /v1/messages",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(api_of(request.url.path), e.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = (e.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error_response(api_of(request.url.path), 400, f"{where or 'body'}: {first.get('msg', 'invalid')}", where)

    def record(**fields) -> None:
        if gateway.recorder is not None:
            gateway.recorder.submit({"kind": "call", "call_id": uuid.uuid4().hex, "upstream": upstream.id,
                                     "t": time.time(), **fields})

    def base_record(request: Request, api: str, body: dict, sid: str, named_by: str) -> dict[str, Any]:
        return {"session": sid, "named_by": named_by, "api": api, "route": request.url.path,
                "client": (request.headers.get("user-agent") or "")[:200], "requested_model": body.get("model"),
                "request": {k: v for k, v in body.items() if k != "model"}}

    def headers(sid: str, answered_by: str) -> dict[str, str]:
        return {"X-Agentdistill-Session": sid, "X-Agentdistill-Answered-By": answered_by}

    def tokens_and_cost(info: dict, prompt: int, completion: int) -> dict[str, Any]:
        cost = info["cost"] if "cost" in info else upstream.cost(prompt, completion)
        extra = {k: v for k, v in info.items() if k not in ("answered_by", "cost", "latency")}
        return {"prompt_tokens": prompt, "completion_tokens": completion, "cost": cost,
                "answered_by": info.get("answered_by") or upstream.id, **({"extra": extra} if extra else {})}

    def failed(e: Exception, base: dict, t0: float) -> GatewayError:
        error = upstream_failure(e, upstream.id)
        gateway.upstream_errors += 1
        log.warning("gateway: call of session %s failed: %s", base["session"], error.message)
        record(**base, response=None, error=error.message, latency=time.perf_counter() - t0)
        return error

    # ---- OpenAI Chat Completions ---------------------------------------------------------------------------
    async def chat(request: Request, sid: str | None):
        body = await _json(request)
        _check_openai(body)
        sid, named_by, digests = _resolve(gateway, request, sid, OPENAI, body)
        base = base_record(request, OPENAI, body, sid, named_by)
        info: dict[str, Any] = {}
        CALL_INFO.set(info)
        t0 = time.perf_counter()
        try:
            result = await upstream.chat(body)
        except GatewayError:  # the request, not the upstream
            raise
        except Exception as e:
            raise failed(e, base, t0) from None
        if body.get("stream"):
            return StreamingResponse(_openai_stream(result, body, base, info, t0, digests), media_type="text/event-stream",
                                     headers={**headers(sid, upstream.id), "Cache-Control": "no-cache"})
        out = result.model_dump()
        usage = out.get("usage") or {}
        fields = tokens_and_cost(info, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        if "extra" in fields:  # the cascade says who answered and how sure the student was
            out["agentdistill"] = {"answered_by": fields["answered_by"], **fields["extra"]}
        record(**base, response=out, latency=time.perf_counter() - t0, **fields)
        _remember(gateway, OPENAI, digests, [c.get("message") or {} for c in out.get("choices") or []], sid)
        return JSONResponse(out, headers=headers(sid, fields["answered_by"]))

    async def _openai_stream(result, body, base, info, t0, digests):
        import litellm

        CALL_INFO.set(info)  # this runs in the response's own task
        wanted_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks, error = [], None
        try:
            async for chunk in result:
                chunks.append(chunk)
                if not chunk.choices and not wanted_usage:  # the usage the gateway asked for, not the client
                    continue
                yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
        except Exception as e:  # the upstream failed mid-stream: the status is sent already, so an error event
            error = upstream_failure(e, upstream.id)
            gateway.upstream_errors += 1
            log.warning("gateway: stream of session %s failed: %s", base["session"], error.message)
            yield f"data: {json.dumps(error_body(OPENAI, error.status, error.message))}\n\n"
        else:
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: what was streamed is recorded
            try:
                full = litellm.stream_chunk_builder(chunks, messages=body.get("messages")) if chunks else None
                out = full.model_dump() if full is not None else None
                usage = (out or {}).get("usage") or {}
                record(**base, response=out, latency=time.perf_counter() - t0,
                       error=error.message if error else (None if out else "the stream ended before any answer"),
                       **tokens_and_cost(info, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0))
                if out:
                    _remember(gateway, OPENAI, digests, [c.get("message") or {} for c in out.get("choices") or []],
                              base["session"])
            except Exception as e:  # the client has its answer; the gap is said, not raised into the server
                log.warning("gateway: a stream of session %s was not recorded: %s", base["session"], one_line(str(e)))

    # ---- Anthropic Messages --------------------------------------------------------------------------------
    async def messages(request: Request, sid: str | None):
        body = await _json(request)
        _check_anthropic(body)
        sid, named_by, digests = _resolve(gateway, request, sid, ANTHROPIC, body)
        base = base_record(request, ANTHROPIC, body, sid, named_by)
        info: dict[str, Any] = {}
        CALL_INFO.set(info)
        t0 = time.perf_counter()
        try:
            result = await upstream.messages(body)
        except Exception as e:
            raise failed(e, base, t0) from None
        if body.get("stream"):
            return StreamingResponse(_anthropic_stream(result, base, info, t0, digests), media_type="text/event-stream",
                                     headers={**headers(sid, upstream.id), "Cache-Control": "no-cache"})
        out = dict(result)
        fields = tokens_and_cost(info, *_anthropic_tokens(out.get("usage")))
        record(**base, response=out, latency=time.perf_counter() - t0, **fields)
        _remember(gateway, ANTHROPIC, digests, [{"role": "assistant", "content": out.get("content")}], sid)
        return JSONResponse(out, headers=headers(sid, fields["answered_by"]))

    async def _anthropic_stream(result, base, info, t0, digests):
        from agentdistill.gateway.steps import assemble_anthropic_stream

        CALL_INFO.set(info)
        parts: list[bytes] = []
        error = None
        try:
            async for piece in result:
                data = piece if isinstance(piece, bytes) else str(piece).encode()
                parts.append(data)
                yield data
        except Exception as e:
            error = upstream_failure(e, upstream.id)
            gateway.upstream_errors += 1
            log.warning("gateway: stream of session %s failed: %s", base["session"], error.message)
            yield f"event: error\ndata: {json.dumps(error_body(ANTHROPIC, error.status, error.message))}\n\n".encode()
        finally:
            try:
                message = assemble_anthropic_stream(_sse_events(b"".join(parts))) if parts else None
                record(**base, response=message, latency=time.perf_counter() - t0,
                       error=error.message if error else (None if message else "the stream ended before any answer"),
                       **tokens_and_cost(info, *_anthropic_tokens((message or {}).get("usage"))))
                if message is not None:
                    _remember(gateway, ANTHROPIC, digests, [{"role": "assistant", "content": message["content"]}],
                              base["session"])
            except Exception as e:
                log.warning("gateway: a stream of session %s was not recorded: %s", base["session"], one_line(str(e)))

    async def count_tokens(request: Request):
        import litellm

        from agentdistill.gateway.steps import openai_shape

        body = await _json(request)
        _check_messages(body, _ANTHROPIC_ROLES)
        messages, tools, _ = openai_shape({"api": ANTHROPIC, "request": body, "requested_model": body.get("model")})
        count = await asyncio.to_thread(litellm.token_counter, model=upstream.id, messages=messages, tools=tools)
        return {"input_tokens": count}

    async def models():
        return {"object": "list", "has_more": False, "data": [
            {"id": upstream.id, "object": "model", "type": "model", "display_name": upstream.id,
             "owned_by": "agentdistill", "created": 0, "created_at": "1970-01-01T00:00:00Z"}]}

    for prefix in ("", "/sessions/{sid}"):
        app.add_api_route(prefix + "/v1/chat/completions", _bind(chat, prefix), methods=["POST"])
        app.add_api_route(prefix + "/v1/messages", _bind(messages, prefix), methods=["POST"])
        app.add_api_route(prefix + "/v1/messages/count_tokens", count_tokens, methods=["POST"])
        app.add_api_route(prefix + "/v1/models", models, methods=["GET"])

    @app.post("/sessions/{sid}/outcome")
    async def outcome(sid: str, request: Request):
        check_session_id(sid)
        body = await _json(request)
        result = _outcome(body)
        if gateway.recorder is None:
            raise GatewayError(409, "this gateway records nothing (started with --no-record): no session to attach to")
        known = await asyncio.to_thread(gateway.recorder.known, sid)
        if known is False:
            raise GatewayError(404, f"no session {sid!r}: attach an outcome to a session that made a call", param="session")
        gateway.recorder.submit({"kind": "outcome", "session": sid, "outcome": result, "t": time.time()})
        # 202: written by the recorder after the session's calls (or kept in the spool while the store fails)
        return JSONResponse({"session": sid, "outcome": result, "store": gateway.recorder.status()["store"]},
                            status_code=202)

    @app.get("/health")
    @app.get("/v1/agentdistill/status")
    async def health():
        return gateway.status()

    return app


def _bind(handler, prefix: str):
    """The route function for `handler` with the session from the path, or none."""
    if prefix:
        async def with_session(request: Request, sid: str):
            return await handler(request, sid)
        return with_session

    async def without_session(request: Request):
        return await handler(request, None)
    return without_session


def _outcome(body: dict[str, Any]) -> dict[str, Any]:
    """An outcome's fields, checked: success (bool), reward and score (numbers), feedback (text), tags (strings)."""
    known = {"success", "reward", "score", "feedback", "tags"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise GatewayError(400, f"{unknown[0]}: an outcome has success, reward, score, feedback and tags", param=unknown[0])
    if not any(body.get(k) is not None for k in known):
        raise GatewayError(400, "an empty outcome: give success, reward, score, feedback or tags")
    if body.get("success") is not None and not isinstance(body["success"], bool):
        raise GatewayError(400, "success: true or false", param="success")
    for field in ("reward", "score"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GatewayError(400, f"{field}: a number", param=field)
    if body.get("feedback") is not None and not isinstance(body["feedback"], str):
        raise GatewayError(400, "feedback: text", param="feedback")
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) and 0 < len(t) <= 100 for t in tags)
                                 and len(tags) <= 50):
        raise GatewayError(400, "tags: a list of up to 50 strings of 1 to 100 characters", param="tags")
    return {k: body[k] for k in known if body.get(k) is not None}


def _anthropic_tokens(usage: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens: the prompt counts what was read from and written to the provider's cache too."""
    usage = usage or {}
    prompt = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    return prompt, int(usage.get("output_tokens") or 0)


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in frame.split("\n") if line.startswith("data:"))
        if data:
            try:
                events.append(json.loads(data))
            except ValueError:
                continue
    return events
