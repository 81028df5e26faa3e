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
    def __init__(self, reply: str | Callable[[dict[str, Any]], str] = "Action: look around", latency: float = 0.0,
                 failures: list[int | str | dict] | None = None, cached_tokens: int | None = None):
        """`failures`: what to answer the first requests with, in order, before succeeding: an HTTP status,
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
                else:
                    self.send(fault, stub._payload(fault, body))

            def do_GET(self):  # noqa: N802  (/v1/models, used as a health check)
                self.send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

        super().__init__(Handler)

    def _payload(self, status: int, body: dict) -> dict:
        if status != 200:
            return {"error": {"message": f"stub error {status}", "type": "rate_limit" if status == 429 else "server"}}
        n = body.get("n") or 1
        text = self.reply(body) if callable(self.reply) else self.reply
        return {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "stub"),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4 * n, "total_tokens": 20 + 4 * n,
                      **({"prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
                         if self.cached_tokens is not None else {})},
        }

    @property
    def url(self) -> str:
        return f"{super().url}/v1"
