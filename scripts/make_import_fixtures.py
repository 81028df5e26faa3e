"""Regenerate the trace files under tests/data/import/ by running the real agent tools offline.

Each tool runs against a scripted stand-in of its model API on 127.0.0.1 (no network, no key), in a temporary
project directory with HOME set to a temporary directory, so the files it writes are exactly what a user's
machine holds:
  claude-code  `claude -p` (npm @anthropic-ai/claude-code) against an Anthropic Messages stub: one Bash `ls`
               tool use, then a final answer -> claude-code-session.jsonl (from $HOME/.claude/projects/)
  codex        `codex exec` (npm @openai/codex) against an OpenAI Responses stub: one shell call, then an
               answer -> codex-rollout.jsonl (from $HOME/.codex/sessions/YYYY/MM/DD/)
  atif         Harbor's own converters (pip harbor, Python >= 3.12) turn the two files above into ATIF
               trajectories -> atif-claude-code.json, atif-codex.json
  inspect      `inspect eval` of a two-sample task with a tool, on inspect_ai's mockllm/model scripted to call
               it -> inspect-log.eval
Usage (each tool is found on PATH, or give its path):
  python scripts/make_import_fixtures.py claude-code [--claude PATH]
  python scripts/make_import_fixtures.py codex [--codex PATH]
  python scripts/make_import_fixtures.py inspect
  python scripts/make_import_fixtures.py atif --harbor-python /tmp/harbor/bin/python
Install the CLIs with e.g. `npm install --prefix /tmp/agents @anthropic-ai/claude-code @openai/codex`
(then PATH=/tmp/agents/node_modules/.bin:$PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agentdistill.testing import LocalServer, QuietHandler  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "import"
PROJECT_FILES = {"notes.txt": "the launch code is 1234\n", "README.md": "# demo project\n"}


# ---- Anthropic Messages stub ----------------------------------------------------------------------------------
class AnthropicStub(LocalServer):
    """Answers /v1/messages as Anthropic does (SSE when `stream` is set). `script(body)` returns the assistant's
    content blocks for a request; every request is kept in `seen`."""

    def __init__(self, script):
        self.seen: list[dict[str, Any]] = []
        stub = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                stub.seen.append({"path": self.path, "body": body})
                if "count_tokens" in self.path:
                    return self.send(200, {"input_tokens": 100})
                blocks = script(body)
                message = {
                    "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                    "model": body.get("model", "stub"), "content": blocks,
                    "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 120 + 10 * len(body.get("messages", [])), "output_tokens": 17,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                }
                if body.get("stream"):
                    self.stream(message)
                else:
                    self.send(200, message)

            def do_GET(self):  # noqa: N802
                self.send(200, {"data": [], "has_more": False})

            def event(self, name: str, data: dict) -> None:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

            def stream(self, message: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                usage = message["usage"]
                self.event("message_start", {"type": "message_start", "message": {
                    **message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}})
                for i, block in enumerate(message["content"]):
                    if block["type"] == "text":
                        self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                           "content_block": {"type": "text", "text": ""}})
                        self.event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                           "delta": {"type": "text_delta", "text": block["text"]}})
                    else:
                        self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                           "content_block": {**block, "input": {}}})
                        self.event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                            "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
                    self.event("content_block_stop", {"type": "content_block_stop", "index": i})
                self.event("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]}})
                self.event("message_stop", {"type": "message_stop"})
                self.wfile.flush()

        super().__init__(Handler)


def claude_script(body: dict) -> list[dict]:
    """The agent's turns: list the project (Bash ls), then read notes.txt (Read), then answer. Side requests
    Claude Code makes without tools (titles, topic checks) get a short text."""
    if not body.get("tools"):
        return [{"type": "text", "text": "Listing project files"}]
    results = [b for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"]
    if not results:
        return [{"type": "text", "text": "I'll list the files first."},
                {"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:20], "name": "Bash",
                 "input": {"command": "ls", "description": "List files in the project"}}]
    if len(results) == 1:
        return [{"type": "tool_use", "id": "toolu_02" + uuid.uuid4().hex[:20], "name": "Read",
                 "input": {"file_path": CLAUDE_CWD["path"] + "/notes.txt"}}]
    return [{"type": "text", "text": "The project has README.md and notes.txt; notes.txt says the launch code is 1234."}]


CLAUDE_CWD: dict[str, str] = {}


def make_claude_code(claude: str, out_dir: Path = OUT) -> Path:
    """Run `claude -p` against the stub; the session file it wrote, copied to out_dir."""
    with tempfile.TemporaryDirectory(prefix="ad-claude-") as tmp, AnthropicStub(claude_script) as stub:
        home, project = Path(tmp) / "home", Path(tmp) / "demo-project"
        home.mkdir()
        project.mkdir()
        for name, text in PROJECT_FILES.items():
            (project / name).write_text(text)
        CLAUDE_CWD["path"] = str(project)
        env = {
            "PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": stub.url,
            "ANTHROPIC_API_KEY": "sk-ant-fixture-not-a-real-key", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        }
        proc = subprocess.run(
            [claude, "-p", "What is in this project? Read notes.txt.", "--output-format", "json",
             "--allowedTools", "Bash(ls:*)", "Read", "--model", "claude-sonnet-4-5"],
            cwd=project, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise SystemExit(f"claude failed ({proc.returncode}): {proc.stderr[-2000:]} {proc.stdout[-2000:]}")
        sessions = sorted((home / ".claude" / "projects").glob("*/*.jsonl"))
        if not sessions:
            raise SystemExit(f"claude wrote no session under {home}/.claude/projects: {proc.stdout[-2000:]}")
        out = out_dir / "claude-code-session.jsonl"
        # the temporary paths are the only machine-specific text: keep them recognisable but stable
        text = sessions[-1].read_text().replace(str(project), "/tmp/demo-project").replace(str(home), "/tmp/home")
        out.write_text(text)
        print(f"{out}: {len(text.splitlines())} lines; result: {proc.stdout[:300]}", file=sys.stderr)
        print(f"stub saw {len(stub.seen)} requests: {[ (s['path'], bool(s['body'].get('tools'))) for s in stub.seen]}",
              file=sys.stderr)
        return out


# ---- OpenAI Responses stub (what `codex exec` speaks) ----------------------------------------------------------
class ResponsesStub(LocalServer):
    """Answers POST /v1/responses as OpenAI streams it (server-sent events). `script(body)` returns the output
    items of the response (messages and function calls); every request is kept in `seen`."""

    def __init__(self, script):
        self.seen: list[dict[str, Any]] = []
        stub = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                stub.seen.append({"path": self.path, "body": body})
                items = script(body)
                rid = f"resp_{uuid.uuid4().hex[:24]}"
                usage = {"input_tokens": 900 + 50 * len(body.get("input") or []), "output_tokens": 21,
                         "total_tokens": 921 + 50 * len(body.get("input") or []),
                         "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
                response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                            "model": body.get("model"), "output": []}
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                seq = iter(range(10_000))
                self.event("response.created", {"type": "response.created", "sequence_number": next(seq),
                                                 "response": response})
                for i, item in enumerate(items):
                    self.event("response.output_item.added", {"type": "response.output_item.added",
                                                              "sequence_number": next(seq), "output_index": i,
                                                              "item": item})
                    self.event("response.output_item.done", {"type": "response.output_item.done",
                                                             "sequence_number": next(seq), "output_index": i,
                                                             "item": item})
                self.event("response.completed", {"type": "response.completed", "sequence_number": next(seq),
                                                   "response": {**response, "status": "completed", "output": items,
                                                                "usage": usage}})
                self.wfile.flush()

            def do_GET(self):  # noqa: N802  (model listing)
                self.send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}], "models": []})

            def event(self, name: str, data: dict) -> None:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        super().__init__(Handler)


def _shell_call(tools: list[dict], command: str) -> dict:
    """A function call of codex's shell tool, shaped by the tool it offered (its name changes across versions)."""
    names = {t.get("name"): t for t in tools if t.get("type") == "function"}
    for name, args in (("shell_command", {"command": command}), ("exec_command", {"cmd": command}),
                       ("shell", {"command": ["bash", "-lc", command]})):
        if name in names:
            return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:20]}", "status": "completed",
                    "call_id": f"call_{uuid.uuid4().hex[:20]}", "name": name, "arguments": json.dumps(args)}
    raise SystemExit(f"codex offered no shell tool this script knows: {sorted(n for n in names if n)}")


def codex_script(body: dict) -> list[dict]:
    """The agent's turns: run `ls`, then `cat notes.txt`, then answer."""
    outputs = [i for i in body.get("input") or [] if i.get("type") == "function_call_output"]
    message = lambda text: {"type": "message", "id": f"msg_{uuid.uuid4().hex[:20]}", "status": "completed",  # noqa: E731
                            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}
    if not body.get("tools"):  # a side request (e.g. a title): a short text
        return [message("Project listing")]
    if not outputs:
        return [message("I'll list the files first."), _shell_call(body["tools"], "ls")]
    if len(outputs) == 1:
        return [_shell_call(body["tools"], "cat notes.txt")]
    return [message("The project has README.md and notes.txt; notes.txt says the launch code is 1234.")]


def make_codex(codex: str, out_dir: Path = OUT) -> Path:
    """Run `codex exec` against the stub; the rollout it wrote, copied to out_dir."""
    with tempfile.TemporaryDirectory(prefix="ad-codex-") as tmp, ResponsesStub(codex_script) as stub:
        home, project = Path(tmp) / "home", Path(tmp) / "demo-project"
        (home / ".codex").mkdir(parents=True)
        project.mkdir()
        for name, text in PROJECT_FILES.items():
            (project / name).write_text(text)
        (home / ".codex" / "config.toml").write_text(
            'model = "stub-model"\nmodel_provider = "stub"\n\n[model_providers.stub]\nname = "stub"\n'
            f'base_url = "{stub.url}/v1"\nwire_api = "responses"\nenv_key = "STUB_API_KEY"\n'
            "request_max_retries = 0\nstream_max_retries = 0\n")
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home / ".codex"),
               "STUB_API_KEY": "sk-fixture-not-a-real-key", "RUST_LOG": "error"}
        proc = subprocess.run(
            [codex, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
             "What is in this project? Read notes.txt."],
            cwd=project, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise SystemExit(f"codex failed ({proc.returncode}): {proc.stderr[-3000:]} {proc.stdout[-2000:]}")
        rollouts = sorted((home / ".codex" / "sessions").glob("*/*/*/rollout-*.jsonl"))
        if not rollouts:
            raise SystemExit(f"codex wrote no rollout under {home}/.codex/sessions: {proc.stderr[-2000:]}")
        out = out_dir / "codex-rollout.jsonl"
        text = rollouts[-1].read_text().replace(str(project), "/tmp/demo-project").replace(str(home), "/tmp/home")
        out.write_text(text)
        print(f"{out}: {len(text.splitlines())} lines; stub saw {len(stub.seen)} requests", file=sys.stderr)
        return out


# ---- Inspect AI ------------------------------------------------------------------------------------------------
def make_inspect(out_dir: Path = OUT) -> Path:
    """A two-sample task with one tool (`list_files`), solved by a ReAct-style loop (use_tools + generate) on
    inspect_ai's mockllm/model, scripted by a function of the conversation: call the tool, then answer. The
    second sample's answer is wrong, so the log holds a success and a failure."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ModelOutput, ModelUsage, get_model
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate, system_message, use_tools
    from inspect_ai.tool import tool

    @tool
    def list_files():
        async def execute(directory: str) -> str:
            """List the files in a directory.

            Args:
                directory: The directory to list.
            """
            return {"/project": "README.md\nnotes.txt"}.get(directory, "no such directory")

        return execute

    def script(messages, tools, tool_choice, config):
        # usage given: mockllm would otherwise count tokens with tiktoken, which downloads its vocabulary
        usage = ModelUsage(input_tokens=40 * len(messages), output_tokens=12, total_tokens=40 * len(messages) + 12)
        if not any(m.role == "tool" for m in messages):
            output = ModelOutput.for_tool_call("mockllm/model", "list_files", {"directory": "/project"},
                                               content="I'll look at the directory first.")
        else:
            question = next(m.text for m in messages if m.role == "user")
            answer = "notes.txt" if "notes" in question else "setup.py"
            output = ModelOutput.from_content("mockllm/model", f"The file is {answer}.")
        output.usage = usage
        return output

    task = Task(
        dataset=[Sample(id="notes", input="Which file in /project holds notes?", target="notes.txt"),
                 Sample(id="readme", input="Which file in /project is the readme?", target="README.md")],
        solver=[system_message("You are a helpful assistant with a file tool."), use_tools(list_files()), generate()],
        scorer=includes(), name="find-file")
    with tempfile.TemporaryDirectory(prefix="ad-inspect-") as tmp:
        logs = inspect_eval(task, model=get_model("mockllm/model", custom_outputs=script), log_dir=tmp,
                            log_format="eval", display="none")
        out = out_dir / "inspect-log.eval"
        shutil.copy(logs[0].location, out)
        print(f"{out}: {out.stat().st_size} bytes, status {logs[0].status}", file=sys.stderr)
        return out


# ---- ATIF (Harbor) -------------------------------------------------------------------------------------------
_HARBOR_CONVERT = """
import json, sys, tempfile, shutil
from pathlib import Path
from harbor.agents.installed.claude_code import ClaudeCode
from harbor.agents.installed.codex import Codex
claude_session, codex_rollout, out_dir = map(Path, sys.argv[1:4])
with tempfile.TemporaryDirectory() as tmp:
    logs = Path(tmp) / "claude"
    (logs / "sessions" / "projects" / "-tmp-demo-project").mkdir(parents=True)
    shutil.copy(claude_session, logs / "sessions" / "projects" / "-tmp-demo-project" / claude_session.name)
    t = ClaudeCode(logs_dir=logs, model_name="anthropic/claude-sonnet-4-5").convert_trajectory(logs)
    (out_dir / "atif-claude-code.json").write_text(t.model_dump_json(indent=2, exclude_none=True))
    logs = Path(tmp) / "codex"
    meta = json.loads(codex_rollout.open().readline())["payload"]
    day = logs / "sessions" / meta["timestamp"][:4] / meta["timestamp"][5:7] / meta["timestamp"][8:10]
    day.mkdir(parents=True)
    shutil.copy(codex_rollout, day / f"rollout-{meta['timestamp'][:19].replace(':', '-')}-{meta['id']}.jsonl")
    t = Codex(logs_dir=logs, model_name="openai/stub-model").convert_trajectory(logs)
    (out_dir / "atif-codex.json").write_text(t.model_dump_json(indent=2, exclude_none=True))
"""


def make_atif(harbor_python: str) -> None:
    """ATIF trajectories written by Harbor's own converters (harbor needs Python >= 3.12: give an interpreter
    that has it, e.g. `python3.12 -m venv /tmp/harbor && /tmp/harbor/bin/pip install harbor`) from the Claude Code
    session and the Codex rollout above."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # harbor prices steps with litellm: no download
    subprocess.run([harbor_python, "-c", _HARBOR_CONVERT, str(OUT / "claude-code-session.jsonl"),
                    str(OUT / "codex-rollout.jsonl"), str(OUT)], check=True, env=env, timeout=300)
    print(f"{OUT}/atif-claude-code.json, {OUT}/atif-codex.json", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["claude-code", "codex", "inspect", "atif"])
    parser.add_argument("--claude", default=shutil.which("claude") or "claude")
    parser.add_argument("--codex", default=shutil.which("codex") or "codex")
    parser.add_argument("--harbor-python", default="python3.12", help="A Python (>= 3.12) with harbor installed.")
    parser.add_argument("--out", type=Path, default=OUT, help="Where to write the file (default tests/data/import).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "claude-code":
        make_claude_code(args.claude, args.out)
    elif args.what == "codex":
        make_codex(args.codex, args.out)
    elif args.what == "inspect":
        make_inspect(args.out)
    else:
        make_atif(args.harbor_python)


if __name__ == "__main__":
    main()
