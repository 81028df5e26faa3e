"""The recording gateway (`agentdistill serve --upstream`) with real clients: the `openai` and `anthropic` SDKs,
Claude Code run headless, and an agent framework (the OpenAI Agents SDK) doing a tool-using task. Behind the
gateway a scripted upstream (an OpenAI-compatible stand-in whose answers depend on the request, so tool calls are
deterministic; litellm translates for Anthropic clients), or SmolLM2 in process. Each test checks the session it
left in the store, tool calls included; then bad input, upstream failures, a store that fails, and outcomes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import httpx
import pytest

from agentdistill.store.store import Store
from agentdistill.testing import OpenAIStub, claude_code, free_port, serving

KEY = "gw-test-key-" + "7" * 20
SECRET = "sk-gatewaytest" + "9" * 24  # a secret in the gateway's environment, pasted into a prompt
ARGS = {"get_weather": {"city": "Paris"}, "add": {"a": 2, "b": 3},
        "Bash": {"command": "echo gateway-ok > proof.txt", "description": "Write the proof file"}}


def scripted(body: dict) -> str | dict:
    """The upstream's turns: call the first tool it knows when the last message is not a tool's result, else say
    what the tool answered."""
    names = [t["function"]["name"] for t in body.get("tools") or []]
    last = body["messages"][-1]
    known = [n for n in names if n in ARGS]
    if known and last["role"] != "tool":
        name = "Bash" if "Bash" in known else known[0]
        return {"content": None, "tool_calls": [{"id": f"call_{name}_{len(body['messages'])}", "type": "function",
                                                 "function": {"name": name, "arguments": json.dumps(ARGS[name])}}]}
    result = last.get("content")
    result = result if isinstance(result, str) else json.dumps(result)
    return f"Done. The tool said: {result.strip()}"


@pytest.fixture(scope="module")
def upstream():
    with OpenAIStub(reply=scripted) as stub:
        yield stub


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    """`agentdistill serve --upstream` as a user starts it: its own process, an API key, a SQLite store."""
    tmp = tmp_path_factory.mktemp("gateway")
    port = free_port()
    proc = subprocess.Popen(
        ["agentdistill", "serve", "--upstream", "openai/scripted", "--upstream-api-base", upstream.url,
         "--db", str(tmp / "sessions.db"), "--spool", str(tmp / "spool"), "--port", str(port), "--api-key", KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "AGENTDISTILL_SERVE_API_KEY": "", "COLUMNS": "300", "GATEWAY_TEST_TOKEN": SECRET})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(f"{base}/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the gateway did not start: {proc.stdout.read()}")
        time.sleep(0.2)
    yield {"base": base, "db": str(tmp / "sessions.db"), "tmp": tmp}
    proc.terminate()  # uvicorn shuts down, then re-raises the signal: the exit status is SIGTERM's
    out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out and "error" not in out.lower(), out
    store = Store.open(str(tmp / "sessions.db"), create=False)
    assert [r["run"].status for r in store.list_runs() if r["run"].kind == "gateway"] == ["done"]  # closed cleanly
    store.close()


def session(db: str, sid: str, steps: int, timeout: float = 15.0):
    """The gateway's session `sid` once it holds `steps` steps (recording is off the request path)."""
    store = Store.open(db, create=False)
    try:
        deadline = time.time() + timeout
        while True:
            found = [e for e in store.episodes(with_steps=True, attempts="all") if e.external_id == sid]
            if found and len(found[0].steps) >= steps or time.time() > deadline:
                assert found, f"no session {sid} in the store"
                assert len(found[0].steps) == steps, [s.action for s in found[0].steps]
                return found[0]
            time.sleep(0.1)
    finally:
        store.close()


def tool_names(ep) -> list[list[str]]:
    return [[c["name"] for c in st.info["tool_calls"]] for st in ep.steps]


# ---- real clients ---------------------------------------------------------------------------------------------

def test_openai_sdk_with_tools_then_streaming_is_one_inferred_session(gateway):
    from openai import OpenAI

    client = OpenAI(base_url=gateway["base"] + "/v1", api_key=KEY)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "You answer with tools. " + "Be precise. " * 4000},  # 48 kB
                {"role": "user", "content": [{"type": "text", "text": f"Weather in Paris? My token: {SECRET}"}]}]
    raw = client.chat.completions.with_raw_response.create(model="any", messages=messages, tools=tools, n=2,
                                                            stop=["\n\n"])
    first = raw.parse()
    sid = raw.headers["x-agentdistill-session"]
    assert len(first.choices) == 2 and first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert raw.headers["x-agentdistill-answered-by"] == "openai/scripted"

    # the agent runs the tool and goes on, streaming: the same conversation, so the same session
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    with client.chat.completions.with_streaming_response.create(
            model="any", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}) as r:
        assert r.headers["x-agentdistill-session"] == sid
        chunks = list(r.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Done. The tool said: sunny, 21 C" and chunks[-1].usage.prompt_tokens == 20

    ep = session(gateway["db"], sid, 2)
    assert ep.source == "gateway" and ep.role == "teacher" and ep.provenance["named_by"] == "new"
    assert tool_names(ep) == [["get_weather"], []]
    one, two = ep.steps
    assert one.action == 'get_weather({"city": "Paris"})' and one.answered_by == "openai/scripted"
    assert len(one.calls[0].outputs) == 2 and one.calls[0].params["n"] == 2 and one.calls[0].params["stop"] == ["\n\n"]
    assert one.calls[0].params["tools"][0]["function"]["name"] == "get_weather"
    assert "tools" not in two.calls[0].params  # unchanged tools: their digest only
    assert two.calls[0].params["tools_sha256"] == one.calls[0].params["tools_sha256"]
    assert two.info["stream"] is True and two.observation == f"[tool {call.id}] sunny, 21 C"
    assert two.calls[0].messages[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
    assert (two.prompt_tokens, two.completion_tokens, ep.n_steps, ep.prompt_tokens) == (20, 4, 2, 40)
    assert two.latency > 0 and ep.status == "done"
    # secrets redacted, sizes bounded, as everywhere in the store
    assert SECRET not in json.dumps([st.observation for st in ep.steps] + [st.calls[0].messages for st in ep.steps])
    assert "My token: ***" in one.observation and "My token: ***" in json.dumps(one.calls[0].messages)
    assert len(one.calls[0].messages[0]["content"]) < 33_000 and "truncated by agentdistill" in one.calls[0].messages[0]["content"]
    assert one.calls[0].params["truncated"]["messages[0].content"] == len(messages[0]["content"])


def test_anthropic_sdk_streaming_with_tool_use_in_a_session_named_by_its_path(gateway):
    import anthropic

    client = anthropic.Anthropic(base_url=gateway["base"] + "/sessions/anthropic-1", api_key=KEY)
    tools = [{"name": "get_weather", "description": "Weather in a city.",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    system = [{"type": "text", "text": "You answer with tools.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(model="claude-x", max_tokens=200, system=system, messages=messages, tools=tools) as s:
        first = s.get_final_message()
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": [{"type": "text", "text": "sunny, 21 C"}]}]}]
    with client.messages.stream(model="claude-x", max_tokens=200, system=system, messages=messages, tools=tools) as s:
        second = s.get_final_message()
    assert second.content[0].text == "Done. The tool said: sunny, 21 C" and second.usage.output_tokens == 4
    # and without streaming
    plain = client.messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "Hi"}])
    assert plain.content[0].text.startswith("Done.")

    ep = session(gateway["db"], "anthropic-1", 3)
    assert ep.provenance["named_by"] == "path" and ep.provenance["api"] == "anthropic"
    assert tool_names(ep) == [["get_weather"], [], []]
    one, two, _ = ep.steps
    # stored in OpenAI's chat format: the system block, the tool_use as tool_calls, the tool_result as a tool message
    assert one.calls[0].messages[0]["role"] == "system" and "You answer with tools." in json.dumps(one.calls[0].messages[0])
    assert one.calls[0].outputs[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert two.calls[0].messages[-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21 C"}
    assert two.info["api"] == "anthropic" and two.info["stream"] is True and two.info["finish_reason"] == "end_turn"
    assert two.prompt_tokens == 20 and two.completion_tokens == 4

    # an outcome attached afterwards
    r = httpx.post(f"{gateway['base']}/sessions/anthropic-1/outcome", headers={"x-api-key": KEY},
                   json={"success": True, "reward": 1.0, "score": 0.9, "feedback": "right city", "tags": ["weather"]})
    assert r.status_code == 202 and r.json()["store"] == "ok", r.text
    deadline = time.time() + 10
    while (ep := session(gateway["db"], "anthropic-1", 3)).success is None and time.time() < deadline:
        time.sleep(0.1)
    assert (ep.success, ep.reward, ep.score, ep.feedback, ep.tags) == (True, 1.0, 0.9, "right city", ["weather"])


def test_claude_code_runs_a_tool_through_the_gateway(gateway, upstream, tmp_path):
    """Claude Code, headless, with ANTHROPIC_BASE_URL at the gateway: the scripted upstream asks for its Bash tool,
    Claude Code runs it for real (the file appears), sends the result back and finishes."""
    exe, why = claude_code()
    if exe is None:
        pytest.skip(why)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "ANTHROPIC_BASE_URL": gateway["base"] + "/sessions/claude-code-1",
           "ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    p = subprocess.run([exe, "-p", "Write proof.txt", "--output-format", "json", "--allowedTools", "Bash"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["is_error"] is False and result["result"].startswith("Done."), result
    assert (work / "proof.txt").read_text().strip() == "gateway-ok"

    ep = session(gateway["db"], "claude-code-1", 2)
    assert ep.provenance["client"].startswith("claude-cli/")
    assert tool_names(ep) == [["Bash"], []]
    one, two = ep.steps
    assert json.loads(one.info["tool_calls"][0]["arguments"]) == ARGS["Bash"]
    assert len(one.calls[0].params["tools"]) > 10  # Claude Code's own tools, stored once
    result_message = two.calls[0].messages[-1]
    assert result_message["role"] == "tool" and result_message["tool_call_id"] == one.info["tool_calls"][0]["id"]


def test_an_openai_agents_sdk_agent_does_a_tool_task_through_the_gateway(gateway):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # its traces would go to OpenAI
    ran = []

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append((a, b))
        return a + b

    client = AsyncOpenAI(base_url=gateway["base"] + "/v1", api_key=KEY,
                         default_headers={"X-Agentdistill-Session": "agents-sdk-1"})
    agent = Agent(name="calculator", instructions="Use the add tool.", tools=[add],
                  model=OpenAIChatCompletionsModel(model="scripted", openai_client=client))
    result = Runner.run_sync(agent, "What is 2 + 3?")
    assert ran == [(2, 3)] and result.final_output == "Done. The tool said: 5"

    ep = session(gateway["db"], "agents-sdk-1", 2)
    assert ep.provenance["named_by"] == "header" and tool_names(ep) == [["add"], []]
    assert ep.steps[1].calls[0].messages[-1]["role"] == "tool" and ep.steps[1].calls[0].messages[-1]["content"] == "5"
    assert ep.task.env == "gateway" and ep.task.name == "agents-sdk-1" and ep.task.goal == "What is 2 + 3?"


# ---- errors ---------------------------------------------------------------------------------------------------

def test_bad_input_is_a_4xx_in_each_apis_own_shape(gateway):
    import anthropic
    import openai

    base, auth = gateway["base"], {"Authorization": f"Bearer {KEY}"}
    cases = [  # (path, body, status, field named in the message)
        ("/v1/chat/completions", {"model": "m"}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400, "messages[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": 3}, 400, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
        ("/v1/messages", {"max_tokens": 5, "messages": "hi"}, 400, "messages"),
        ("/sessions/bad id!/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, 400, "session"),
        ("/sessions/nobody-here/outcome", {"success": True}, 404, "no session"),
        ("/sessions/anything/outcome", {"success": "yes"}, 400, "success"),
        ("/sessions/anything/outcome", {"verdict": 1}, 400, "verdict"),
        ("/v1/nothing", {}, 404, "no route"),
    ]
    for path, body, status, field in cases:
        r = httpx.post(base + path, json=body, headers=auth)
        assert r.status_code == status, (path, body, r.text)
        data = r.json()
        if "/v1/messages" in path:
            assert data["type"] == "error" and data["error"]["type"] in ("invalid_request_error", "not_found_error")
            assert field in data["error"]["message"], data
        else:
            assert set(data) == {"error"} and field in data["error"]["message"] and "detail" not in data, data
    for raw in (b"{not json", b"[1, 2]"):
        r = httpx.post(base + "/v1/messages", content=raw, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # keys: missing or wrong is a 401 in the API's shape; the SDKs raise their own errors
    r = httpx.post(base + "/v1/messages", json={"max_tokens": 5, "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(base + "/v1/chat/completions", json={}, headers={"Authorization": "Bearer wrong-key-wrong-key"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.head(base + "/sessions/x").status_code == 200  # Claude Code's reachability probe, keyless
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong-key-wrong-key").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n: an integer"):
        openai.OpenAI(base_url=base + "/v1", api_key=KEY).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], n=99)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        anthropic.Anthropic(base_url=base, api_key=KEY).messages.create(
            model="m", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(base + "/health", headers=auth).json()["recording"]["dropped"] == 0


def test_permanent_upstream_errors_are_not_retried_transient_ones_are():
    from agentdistill.gateway import Upstream, create_gateway_app, open_gateway

    body = {"messages": [{"role": "user", "content": "hi"}]}
    anthropic_body = {"max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    with OpenAIStub(reply="fine", failures=[401, 401, 404, 500, 503]) as stub:
        gateway = open_gateway(Upstream("openai/flaky", api_base=stub.url, retries=2))
        with serving(create_gateway_app(gateway)) as base:
            t0 = time.perf_counter()
            r = httpx.post(base + "/v1/chat/completions", json=body)
            assert r.status_code == 502 and "refused the gateway's credentials" in r.json()["error"]["message"]
            r = httpx.post(base + "/v1/messages", json=anthropic_body)
            assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
            r = httpx.post(base + "/v1/chat/completions", json=body)
            assert r.status_code == 502 and "does not know its model" in r.json()["error"]["message"]
            assert len(stub.seen) == 3 and time.perf_counter() - t0 < 5  # one attempt each
            r = httpx.post(base + "/v1/chat/completions", json=body)  # 500, 503, then an answer
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
            assert len(stub.seen) == 6 and gateway.status()["upstream_errors"] == 3


def test_missing_upstream_credentials_fail_at_start_in_one_line(tmp_path):
    from tests.conftest import run_cli

    db = tmp_path / "s.db"
    p = run_cli("serve", "--upstream", "openai/gpt-4.1-mini", "--db", str(db), env={"OPENAI_API_KEY": ""})
    assert p.returncode == 2 and "OPENAI_API_KEY" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not db.exists()  # nothing written
    p = run_cli("serve", "--upstream", "openai/x", "--student", "local/smollm2-135m")
    assert p.returncode == 2 and "not both" in p.stderr


# ---- a store that fails ---------------------------------------------------------------------------------------

def test_a_failing_store_answers_the_client_spools_the_records_and_writes_them_later(upstream, tmp_path, caplog):
    """The SQLite store locked by another writer: calls are still answered, their records wait in the spool on disk,
    survive the gateway's restart, and the next gateway writes them once the store takes writes again."""
    from openai import OpenAI
    from sqlalchemy import create_engine

    from agentdistill.gateway import Upstream, create_gateway_app, open_gateway

    path, spool = tmp_path / "s.db", tmp_path / "spool"
    Store.open(str(path)).close()

    def impatient_store():  # gives up on a lock after 0.2 s instead of the store's 30 s
        return Store(create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2}))

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    gateway = open_gateway(Upstream("openai/scripted", api_base=upstream.url), impatient_store(), spool=spool,
                           retry_s=0.2)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # from now on, every write of the gateway's finds the store locked
    with caplog.at_level("WARNING", logger="agentdistill.gateway.recorder"):
        with serving(create_gateway_app(gateway)) as base:
            client = OpenAI(base_url=base + "/sessions/locked-1/v1", api_key="unused")
            messages = [{"role": "user", "content": "2 + 3?"}]
            first = client.chat.completions.create(model="m", messages=messages, tools=tools)
            assert first.choices[0].message.tool_calls[0].function.name == "add"  # answered all the same
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": first.choices[0].message.tool_calls[0].id, "content": "5"}]
            second = client.chat.completions.create(model="m", messages=messages, tools=tools)
            assert second.choices[0].message.content == "Done. The tool said: 5"
            r = httpx.post(base + "/sessions/locked-1/outcome", json={"success": True})
            assert r.status_code == 202  # accepted: the session's calls are on their way
            deadline = time.time() + 20
            while (status := httpx.get(base + "/health").json())["recording"]["spooled"] < 3:
                assert time.time() < deadline, status
                time.sleep(0.1)
            assert status["status"] == "degraded" and status["recording"]["store"] == "failing"
            assert "locked" in status["recording"]["last_store_error"] and status["recording"]["recorded"] == 0
    assert any("cannot take writes" in r.getMessage() for r in caplog.records)  # said, not silent
    assert (spool / "pending.jsonl").read_text().count("\n") == 3  # on disk: the gateway is gone now
    locker.execute("ROLLBACK")
    locker.close()

    # the next gateway on this spool writes them first
    restarted = open_gateway(Upstream("openai/scripted", api_base=upstream.url), Store.open(str(path)), spool=spool)
    with serving(create_gateway_app(restarted)):
        deadline = time.time() + 20
        while restarted.status()["recording"]["spooled"]:
            assert time.time() < deadline, restarted.status()
            time.sleep(0.1)
    ep = session(str(path), "locked-1", 2)
    assert tool_names(ep) == [["add"], []] and ep.success is True
    assert restarted.status()["recording"]["recorded"] == 2 and not (spool / "pending.jsonl").exists()


# ---- other answerers: a student alone, the cascade ------------------------------------------------------------

@pytest.mark.slow
def test_a_student_served_alone_in_process_speaks_both_apis(tmp_path):
    import anthropic
    from openai import OpenAI

    from agentdistill.gateway import Upstream, create_gateway_app, open_gateway

    store = Store.open(str(tmp_path / "s.db"))
    gateway = open_gateway(Upstream("llamacpp/smollm2-135m"), store, role="student", spool=tmp_path / "spool")
    with serving(create_gateway_app(gateway)) as base:
        client = OpenAI(base_url=base + "/sessions/student-1/v1", api_key="unused")
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name a color."}],
                                                     max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
        reply = anthropic.Anthropic(base_url=base + "/sessions/student-1", api_key="unused").messages.create(
            model="m", max_tokens=8, system="Answer in one word.", messages=[{"role": "user", "content": "A fruit?"}])
        assert reply.content[0].text.strip() and reply.usage.output_tokens > 0
    ep = session(str(tmp_path / "s.db"), "student-1", 2)
    assert ep.role == "student" and {s.answered_by for s in ep.steps} == {"llamacpp/smollm2-135m"}


def test_the_cascade_answers_through_the_gateway_and_says_who_answered(tmp_path):
    import openai
    from openai import OpenAI

    from agentdistill.gateway import CascadeAnswerer, Upstream, create_gateway_app, open_gateway
    from agentdistill.models import make_model
    from agentdistill.serve import CascadeService

    with OpenAIStub(reply="Action: look") as student, OpenAIStub(reply="Action: open door") as teacher:
        service = CascadeService(make_model("openai/stub-student", api_base=student.url),
                                 make_model("openai/stub-teacher", api_base=teacher.url), samples=2, threshold=1.0)
        answerer = CascadeAnswerer(service)  # threshold 1: the teacher always answers
        gateway = open_gateway(Upstream(answerer.id, answerer=answerer), Store.open(str(tmp_path / "s.db")),
                               role="student", spool=tmp_path / "spool")
        with serving(create_gateway_app(gateway)) as base:
            raw = OpenAI(base_url=base + "/v1", api_key="unused").chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "You are in a room."}])
            resp = raw.parse()
            assert resp.choices[0].message.content == "Action: open door" and resp.model == "openai/stub-teacher"
            assert raw.headers["x-agentdistill-answered-by"] == "openai/stub-teacher"
            assert resp.model_extra["agentdistill"]["deferred"] is True
            sid = raw.headers["x-agentdistill-session"]
            client = OpenAI(base_url=base + "/v1", api_key="unused")
            chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                         stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Action: open door"
            with pytest.raises(openai.BadRequestError, match="streams one answer"):  # not n answers run together
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], n=2, stream=True)
    step = session(str(tmp_path / "s.db"), sid, 1).steps[0]
    assert step.answered_by == "openai/stub-teacher" and step.info["cascade"]["deferred"] is True
    assert step.prompt_tokens > 0
