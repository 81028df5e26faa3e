"""Errors as each API shapes them. A client's SDK reads the status and this body (OpenAI's `{"error": {...}}`,
Anthropic's `{"type": "error", "error": {...}}`), never FastAPI's `{"detail": ...}`. Bad input is a 4xx; a
failure of the upstream is the upstream's 429, or a 502/504 naming it (its refusal of the gateway's own
credentials too: the client's key was fine, so a 401 would send its user after the wrong key)."""

from __future__ import annotations

from typing import Any

from agentdistill.secrets import redact

OPENAI, ANTHROPIC = "openai", "anthropic"

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
_OPENAI_TYPES = {429: "rate_limit_error", 502: "upstream_error", 504: "upstream_error"}


class GatewayError(Exception):
    """A call the gateway answers with an error: `status`, a one-line message, the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def api_of(path: str) -> str:
    """Which API a path belongs to: Anthropic's Messages (`.../v1/messages...`), else OpenAI's."""
    return ANTHROPIC if "/v1/messages" in path else OPENAI


def error_body(api: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    message = one_line(message)
    if api == ANTHROPIC:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(api: str, status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(api, status, message, param, code), status_code=status, headers=headers)


def one_line(text: str) -> str:
    text = redact(str(text)).strip()
    return (text.splitlines()[0] if text else "error")[:500]


def upstream_failure(exc: BaseException, upstream: str) -> GatewayError:
    """What a client is told when the upstream failed for good (after the gateway's retries of transient errors)."""
    import litellm

    status = getattr(exc, "status_code", None)
    detail = one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, litellm.exceptions.AuthenticationError) or status in (401, 403):
        return GatewayError(502, f"the upstream {upstream} refused the gateway's credentials (HTTP {status or 401}): "
                                 f"its operator must fix the key: {detail}")
    if isinstance(exc, litellm.exceptions.NotFoundError) or status == 404:
        return GatewayError(502, f"the upstream {upstream} does not know its model (HTTP 404): {detail}")
    if isinstance(exc, litellm.exceptions.RateLimitError) or status == 429:
        return GatewayError(429, f"the upstream {upstream} is rate limited: {detail}")
    if isinstance(exc, litellm.exceptions.Timeout) or status in (408, 504):
        return GatewayError(504, f"the upstream {upstream} timed out: {detail}")
    if isinstance(exc, (litellm.exceptions.BadRequestError, litellm.exceptions.UnprocessableEntityError)) \
            or status in (400, 413, 422):
        return GatewayError(400, f"the upstream {upstream} refused the request: {detail}")
    return GatewayError(502, f"the upstream {upstream} failed: {detail}")
