"""AppWorld adapter against a STAND-IN for AppWorld's environment server (tests/appworld_standin.py):
same routes, request bodies checked against the real server's OpenAPI schema, one tiny task. The real
server needs AppWorld's downloaded data, which this machine cannot fetch."""

from __future__ import annotations

import re

import pytest

from agentdistill.agents.parsing import parse_code_action
from agentdistill.errors import ConfigError, EnvNotReady

from .appworld_standin import AppWorldStandin

SOLUTION = [
    "print(apis.api_docs.show_app_descriptions())",
    "passwords = apis.supervisor.show_account_passwords()\n"
    "pw = next(p['password'] for p in passwords if p['account_name'] == 'phone')\n"
    "token = apis.phone.login(username='ada@mail.com', password=pw)['access_token']\n"
    "print(apis.phone.search_contacts(access_token=token, query='brother'))",
    "apis.phone.send_text_message(access_token=token, phone_number='5550199', message='{message}')\n"
    "apis.supervisor.complete_task()",
]


def scripted_model(message: str):
    """An OpenAI-compatible reply function: the next block of a fixed solution, as a model would write it."""
    def reply(body):
        turn = sum(m["role"] == "assistant" for m in body["messages"])
        code = SOLUTION[min(turn, len(SOLUTION) - 1)].format(message=message)
        return f"Thought: step {turn + 1} of the plan.\nAction:\n```python\n{code}\n```"
    return reply


def run_student(store, url: str, message: str):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.testing import OpenAIStub

    with OpenAIStub(reply=scripted_model(message)) as stub:
        run_id = run_recipe(store, parse_recipe({
            "env": {"name": "appworld", "split": "dev", "tasks": ["82e2fac_1"], "options": {"url": url}},
            "student": {"model": "openai/stub", "api_base": stub.url, "max_retries": 0, "history": 4},
            "runner": {"max_steps": 6}}), progress=False)
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    return ep, stub


def test_code_actions_complete_the_task_and_appworld_scores_it(tmp_path):
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    with AppWorldStandin() as server:
        ep, stub = run_student(store, server.url, "running late, start without me")
    assert ep.status == "done" and ep.success and ep.score == 100.0 and ep.n_steps == 3
    assert "\n" in ep.steps[1].action and ep.steps[1].action.startswith("passwords = ")  # whole block, not a line
    assert "'first_name': 'Sam'" in ep.steps[1].next_observation
    assert ep.steps[-1].info["tests_passed"] == 2 and ep.steps[-1].done
    routes = [r for r, _ in server.requests]
    assert routes[0] == "/initialize" and routes.count("/execute") == 3 and "/evaluate" in routes
    assert all(r in ("/initialize", "/execute", "/task_completed", "/evaluate", "/close") for r in routes)
    # the system prompt asks for fenced code; earlier code turns are shown back fenced
    msgs = stub.seen[-1]["body"]["messages"]
    assert "```python" in msgs[0]["content"] and "apis.supervisor.complete_task()" in msgs[0]["content"]
    assert msgs[4]["content"].startswith("Thought: step 2 of the plan.\nAction:\n```python\npasswords = ")


def test_partial_credit_is_the_share_of_appworld_tests_passed(tmp_path):
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    with AppWorldStandin() as server:
        ep, _ = run_student(store, server.url, "on my way")
    assert ep.status == "done" and not ep.success and ep.score == 50.0
    assert ep.steps[-1].info["failed_tests"] == ["its text says 'running late, start without me'"]


def test_errors_are_observations_and_missing_data_is_one_clear_line():
    from agentdistill.envs import make
    from agentdistill.envs.base import Task

    with AppWorldStandin() as server:
        env = make("appworld", url=server.url)
        try:
            obs = env.reset(Task("appworld", "82e2fac", 1, "dev"))
            assert obs.goal.startswith("Text my brother Sam") and "Ada Lovelace" in obs.text
            r = env.step("apis.phone.send_text_message(access_token='nope', phone_number='1', message='x')")
            assert not r.done and "Execution failed" in r.observation and "not logged in" in r.observation
            with pytest.raises(EnvNotReady, match=r"could not load task 0000000_1 .*appworld download data"):
                env.reset(Task("appworld", "0000000", 1, "dev"))
        finally:
            env.close()


def test_check_and_make_without_a_server(monkeypatch):
    from agentdistill.envs import registry

    monkeypatch.setenv("APPWORLD_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("APPWORLD_ROOT", raising=False)
    status = registry.check("appworld")
    assert not status.ready
    assert "appworld serve environment" in status.missing() and "appworld install" in status.missing()
    with pytest.raises(EnvNotReady, match="environment 'appworld' is not ready"):
        registry.make("appworld")


def test_task_lists_ids_and_one_task_per_server(tmp_path, monkeypatch):
    from agentdistill.envs.appworld import AppWorldEnv

    monkeypatch.delenv("APPWORLD_ROOT", raising=False)
    monkeypatch.delenv("APPWORLD_URL", raising=False)
    env = AppWorldEnv(url="http://a:1,http://b:1")
    try:
        assert [(t.name, t.variation) for t in env.tasks("dev", ["82e2fac_1", "a1b2c3d_3"])] == [
            ("82e2fac", 1), ("a1b2c3d", 3)]
        with pytest.raises(EnvNotReady, match="APPWORLD_ROOT unset.*appworld download data"):
            env.tasks("dev")
        with pytest.raises(ConfigError, match="unknown AppWorld split"):
            env.tasks("valid")
        second = AppWorldEnv(url="http://a:1,http://b:1")  # the second server
        assert {env.url, second.url} == {"http://a:1", "http://b:1"}
        with pytest.raises(ConfigError, match="every AppWorld server .* is in use"):
            AppWorldEnv(url="http://a:1,http://b:1")
        second.close()
        AppWorldEnv(url="http://a:1,http://b:1").close()  # released servers are free again
    finally:
        env.close()
    lists = tmp_path / "data" / "datasets"
    lists.mkdir(parents=True)
    (lists / "dev.txt").write_text("82e2fac_1\n82e2fac_2\n3d9a636_1\n")
    env = AppWorldEnv(root=str(tmp_path))
    try:
        assert [t.name + "_" + str(t.variation) for t in env.tasks("dev")] == ["82e2fac_1", "82e2fac_2", "3d9a636_1"]
        assert [t.variation for t in env.tasks("dev", ["82e2fac"])] == [1, 2]
        with pytest.raises(EnvNotReady, match="no AppWorld task list at .*train.txt"):
            env.tasks("train")
    finally:
        env.close()


def test_code_parsing():
    p = parse_code_action("Thought: look\nAction:\n```python\nx = 1\nprint(x)\n```\nI will wait.")
    assert p.action == "x = 1\nprint(x)" and p.thought == "look"
    assert parse_code_action("Action: print(1)\nprint(2)").action == "print(1)\nprint(2)"
    assert parse_code_action("```py\nprint(3)").action == "print(3)"  # an unclosed block runs to the end
    two = parse_code_action("```python\nfirst()\n```\nthen\n```python\nsecond()\n```")
    assert two.action == "second()"
    assert re.fullmatch(r"", parse_code_action("Thought: nothing to do").action)
