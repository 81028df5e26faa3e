"""The cascade as an OpenAI-compatible /v1/chat/completions endpoint. `agentdistill serve --student --teacher` runs
it inside the recording gateway (agentdistill/gateway: both APIs, streaming, every call recorded), through
gateway.upstream.CascadeAnswerer; `create_app` here is the bare cascade app, recording nothing.

Each request: retrieve teacher demos for the conversation (goal = first user message, situation =
last user message, recent actions = assistant turns), let the student sample k answers with the
demos in its system prompt, answer with the majority if its share exceeds the threshold, else ask
the teacher. The response says which model answered (`model`, header `X-Agentdistill-Answered-By`,
and an `agentdistill` object with the samples, agreement and cost); `usage` sums both models' tokens.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel

from agentdistill.agents.parsing import majority, parse_action
from agentdistill.distill.icd import DemoIndex, render_demos
from agentdistill.errors import AgentDistillError
from agentdistill.models import ChatModel, Completion
from agentdistill.secrets import redact

log = logging.getLogger(__name__)

CASCADE_MODEL = "agentdistill-cascade"


def _normalized(text: str) -> str:
    """What two samples must share to count as agreeing: the action they name, else the text."""
    return (parse_action(text).action or text.strip()).lower()


class CascadeService:
    def __init__(self, student: ChatModel, teacher: ChatModel, index: DemoIndex | None = None, k_demos: int = 3,
                 samples: int = 3, threshold: float = 0.5, temperature: float = 0.7):
        self.student, self.teacher, self.index = student, teacher, index
        self.k_demos, self.samples, self.threshold, self.temperature = k_demos, samples, threshold, temperature

    def _with_demos(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[list[int]]]:
        if self.index is None:
            return messages, []
        users = [m["content"] for m in messages if m["role"] == "user"]
        actions = [parse_action(m["content"]).action for m in messages if m["role"] == "assistant"]
        demos = self.index.search(users[0] if users else "", users[-1] if users else "", actions, k=self.k_demos)
        block = render_demos(demos)
        if messages and messages[0]["role"] == "system":
            out = [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}, *messages[1:]]
        else:
            out = [{"role": "system", "content": block}, *messages]
        return out, [[d.episode_id, d.step_idx] for d in demos]

    async def answer(self, messages: list[dict[str, str]], max_tokens: int = 256, stop: list[str] | None = None) -> dict[str, Any]:
        prompted, demo_ids = self._with_demos(messages)
        samples = await self.student.acomplete(prompted, n=self.samples, temperature=self.temperature,
                                               max_tokens=max_tokens, stop=stop)
        pick, agreement = majority([_normalized(c.text) for c in samples])
        used: list[Completion] = list(samples)
        if agreement > self.threshold:
            chosen, answered_by = samples[pick], self.student.id
        else:
            (chosen,) = await self.teacher.acomplete(messages, n=1, temperature=0.0, max_tokens=max_tokens, stop=stop)
            used.append(chosen)
            answered_by = self.teacher.id
        prompt_tokens = samples[0].prompt_tokens + (chosen.prompt_tokens if answered_by == self.teacher.id else 0)
        completion_tokens = sum(c.completion_tokens for c in used)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answered_by,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": chosen.text},
                         "finish_reason": chosen.finish_reason or "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "agentdistill": {
                "answered_by": answered_by,
                "deferred": answered_by == self.teacher.id,
                "agreement": agreement,
                "samples": [c.text for c in samples],
                "demos": demo_ids,
                "cost": sum(c.cost for c in used),
            },
        }


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat request the cascade uses; others (temperature, ...) are ignored:
    sampling is the cascade's own configuration."""

    model: str = CASCADE_MODEL
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


MAX_REQUEST_BYTES = 1 << 20  # a chat of agent turns is kilobytes; bound what a client can make us parse and send on


class _Guard:
    """ASGI middleware in front of every route: the API key first (401, before anything is read or any
    model asked), then the body bounded (413) whether it comes with a Content-Length or chunked. The
    body is read here, at most max_request_bytes + one chunk, and replayed to the app. The key comes as
    OpenAI clients send it (`Authorization: Bearer <key>`) or as Anthropic's do (`x-api-key: <key>`); errors
    come in the shape of the API the path belongs to. A HEAD request (Claude Code's reachability probe of its
    base URL, sent without a key) is answered 200 with nothing in it."""

    def __init__(self, app, keys: list[bytes], max_request_bytes: int):
        self.app, self.keys, self.limit = app, keys, max_request_bytes

    async def __call__(self, scope, receive, send):
        import hmac

        from starlette.responses import Response

        from agentdistill.gateway.errors import api_of, error_response

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "HEAD":
            return await Response(status_code=200)(scope, receive, send)
        api = api_of(scope.get("path", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.keys:
            auth = headers.get("authorization", "")
            given = [auth[7:].strip().encode() if auth.lower().startswith("bearer ") else b"",
                     headers.get("x-api-key", "").strip().encode()]
            if not any(hmac.compare_digest(g, k) for g in given if g for k in self.keys):
                return await error_response(
                    api, 401, "missing or wrong API key: send Authorization: Bearer <key> (or x-api-key: <key>)",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        too_big = error_response(api, 413, f"request body over {self.limit} bytes")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notices

        await self.app(scope, replay, send)


def create_app(service: CascadeService, api_keys: list[str] | None = None, max_request_bytes: int = MAX_REQUEST_BYTES):
    """The FastAPI app. With `api_keys`, every request must carry one (`Authorization: Bearer <key>`, as
    OpenAI clients send it; compared in constant time), else 401: whoever reaches the server would spend
    the teacher's API budget."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    from agentdistill.secrets import register

    keys = [k.encode() for k in api_keys or []]
    for k in api_keys or []:
        register(k)
    app = FastAPI(title="agentdistill cascade")
    app.add_middleware(_Guard, keys=keys, max_request_bytes=max_request_bytes)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": CASCADE_MODEL, "object": "model", "owned_by": "agentdistill"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if req.stream:
            raise HTTPException(400, "stream=true is not supported by the cascade: send stream=false")
        if req.n != 1:
            raise HTTPException(400, "n must be 1: the cascade returns one answer (its samples are in `agentdistill`)")
        if not req.messages:
            raise HTTPException(400, "messages is empty: send at least one user message")
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        try:
            body = await service.answer([m.model_dump() for m in req.messages],
                                        max_tokens=req.max_completion_tokens or req.max_tokens or 256, stop=stop)
        except AgentDistillError as e:  # the teacher or student failed for good (after its retries): a 502
            message = redact(str(e)).splitlines()[0][:500] if str(e).strip() else type(e).__name__
            log.warning("chat completion failed: %s", message)
            return JSONResponse({"error": {"message": message, "type": "upstream_error", "code": 502}},
                                status_code=502)
        return JSONResponse(body, headers={"X-Agentdistill-Answered-By": body["model"]})

    return app
