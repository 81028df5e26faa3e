"""Stand-in servers for tests and benchmarks.

`LocalServer` is the base of every stand-in (this module's OpenAIStub, the WebShop and AppWorld
stand-ins in tests/): a threaded HTTP server on a free local port, run while in a `with` block.
`OpenAIStub` is an OpenAI-compatible stand-in: fixed latency per call, scripted failures, and a
record of what it received. It is not a model: it answers with a fixed reply, or with what a given
function of the request returns (scripted answers).
`throwaway_postgres` starts a real PostgreSQL server from the system's binaries for a test or a
benchmark, and removes it afterwards."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresUnavailable(Exception):
    """PostgreSQL is not installed here (or cannot run as this user); the message says what to install.
    A server that is installed but fails to start raises RuntimeError instead."""


def _pg_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextmanager
def throwaway_postgres(user: str, database: str, *settings: str) -> Iterator[tuple[str, int]]:
    """A PostgreSQL server on 127.0.0.1 in a temporary directory (apt: postgresql), with `database`
    created: yields its URL (no password: trust auth) and the postmaster's pid; stopped and removed on
    exit. `settings` are server options, e.g. "fsync=off" for tests that need no durability."""
    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if not (initdb and postgres):
        raise PostgresUnavailable("PostgreSQL server binaries not found: apt-get install postgresql")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="ad-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        if not shutil.which("runuser"):
            raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL as the postgres user")
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    proc = None
    try:
        subprocess.run([*as_user, initdb, "-D", str(data / "db"), "-U", user, "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        port = free_port()
        options = [a for s in ("listen_addresses=127.0.0.1", *settings) for a in ("-c", s)]
        proc = subprocess.Popen([*as_user, postgres, "-D", str(data / "db"), "-p", str(port), "-k", str(data),
                                 *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(f"postgresql://{user}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{database}"')
                break
            except psycopg.OperationalError:
                if time.time() > deadline or proc.poll() is not None:  # installed but broken: not a skip
                    raise RuntimeError("PostgreSQL did not start within 30 s") from None
                time.sleep(0.3)
        postmaster = int((data / "db" / "postmaster.pid").read_text().split()[0])  # not runuser's pid
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}", postmaster
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data, ignore_errors=True)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and sends whole bodies."""

    def send(self, status: int, data: bytes | str | dict, content_type: str = "application/json") -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops bursts of concurrent connects
    daemon_threads = True


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `handler`, while in a `with` block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class OpenAIStub(LocalServer):
    def __init__(self, reply: str | Callable[[dict[str, Any]], str | dict] = "Action: look around", latency: float = 0.0,
                 failures: list[int | str | dict] | None = None, cached_tokens: int | None = None):
        """`reply`: the answer's text, or a function of the request returning the text or a whole assistant
        message (e.g. with `tool_calls`: a scripted agent turn). A request with `stream: true` is answered as
        OpenAI streams (server-sent chunks, the usage last when `stream_options.include_usage` asks for it).
        `failures`: what to answer the first requests with, in order, before succeeding: an HTTP status,
        "empty" (200 with no choices), or {"status": 429, "headers": {"Retry-After": "2"}, "json": {...}}.
        `cached_tokens`: reported as the prompt tokens served from the provider's cache (as OpenAI does)."""
        self.reply = reply
        self.cached_tokens = cached_tokens
        self.latency = latency
        self.failures = list(failures or [])
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.seen.append({"auth": self.headers.get("Authorization"), "body": body, "t": time.time()})
                    fault = stub.failures.pop(0) if stub.failures else 200
                time.sleep(stub.latency)
                if fault == "empty":
                    self.send(200, {**stub._payload(200, body), "choices": []})
                elif isinstance(fault, dict):
                    status = fault.get("status", 200)
                    data = json.dumps(fault.get("json") or stub._payload(status, body)).encode()
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **fault.get("headers", {})}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif fault == 200 and body.get("stream"):
                    self.stream(stub._payload(200, body), body)
                else:
                    self.send(fault, stub._payload(fault, body))

            def stream(self, payload: dict, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                head = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
                for choice in payload["choices"]:
                    for delta in _deltas(choice["message"]):
                        self.wfile.write(b"data: " + json.dumps(
                            {**head, "choices": [{"index": choice["index"], "delta": delta, "finish_reason": None}]}
                        ).encode() + b"\n\n")
                    self.wfile.write(b"data: " + json.dumps({**head, "choices": [
                        {"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}]}).encode()
                        + b"\n\n")
                if (body.get("stream_options") or {}).get("include_usage"):
                    self.wfile.write(b"data: " + json.dumps({**head, "choices": [], "usage": payload["usage"]}).encode()
                                     + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def do_GET(self):  # noqa: N802  (/v1/models, used as a health check)
                self.send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

        super().__init__(Handler)

    def _payload(self, status: int, body: dict) -> dict:
        if status != 200:
            return {"error": {"message": f"stub error {status}", "type": "rate_limit" if status == 429 else "server"}}
        n = body.get("n") or 1
        reply = self.reply(body) if callable(self.reply) else self.reply
        message = {"role": "assistant", **reply} if isinstance(reply, dict) else {"role": "assistant", "content": reply}
        return {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "stub"),
            "choices": [
                {"index": i, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4 * n, "total_tokens": 20 + 4 * n,
                      **({"prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
                         if self.cached_tokens is not None else {})},
        }

    @property
    def url(self) -> str:
        return f"{super().url}/v1"


def _deltas(message: dict) -> list[dict]:
    """A message as OpenAI streams it: the role, the text in a few pieces, then each tool call whole."""
    text = message.get("content") or ""
    pieces = [text[i:i + 8] for i in range(0, len(text), 8)]
    out = [{"role": "assistant", "content": pieces[0] if pieces else ""}] + [{"content": p} for p in pieces[1:]]
    out += [{"tool_calls": [{"index": i, **call}]} for i, call in enumerate(message.get("tool_calls") or [])]
    return out


# Claude Code, the real agent the gateway's tests run (npm); the version they were written against
CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.197"


def claude_code(install: bool = True) -> tuple[str | None, str]:
    """(path of the `claude` executable, "") or (None, why not). It lives in the cache (`claude-code/`), put there
    by `scripts/install.sh --test` or, with `install`, here on first use (npm; once, about 20 s)."""
    from agentdistill.paths import cache_dir

    prefix = cache_dir() / "claude-code"
    exe = prefix / "node_modules" / ".bin" / "claude"
    if exe.exists():
        return str(exe), ""
    if not shutil.which("node") or not shutil.which("npm"):
        return None, "Claude Code needs Node.js and npm (apt: nodejs npm)"
    if not install:
        return None, f"Claude Code is not installed in {prefix} (scripts/install.sh --test installs it)"
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), CLAUDE_CODE],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not exe.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"npm could not install {CLAUDE_CODE} ({last})"
    return str(exe), ""


@contextmanager
def serving(app):
    """An ASGI `app` served by uvicorn on a free local port, in a thread, while in the block; yields its base
    URL (the tests of `serve` and of the gateway)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
