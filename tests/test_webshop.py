"""WebShop text-mode adapter against a STAND-IN server (tests/webshop_standin.py) with WebShop's page
structure and reward rule; the real site (1.18M products) is github.com/princeton-nlp/WebShop."""

from __future__ import annotations

import pytest

from agentdistill.envs.base import Task

from .conftest import run_cli
from .webshop_standin import WebShopStandIn


@pytest.fixture
def shop():
    with WebShopStandIn() as s:
        yield s


def test_adapter_buys_the_right_product(shop):
    from agentdistill.envs.webshop import WebShopEnv

    env = WebShopEnv(url=shop.url)
    obs = env.reset(Task("webshop", "shop", 0, "test"))
    assert obs.goal.startswith("i need lightweight running shoes") and "[button] Search [button_]" in obs.text
    r = env.step("search[lightweight running shoes]")
    assert "[button] B0001 [button_]" in r.observation and not r.done
    assert env.admissible_actions() == ["click[Back to Search]", "click[B0001]", "click[B0002]"]
    r = env.step("click[B0001]")
    assert "[button] 9 [button_]" in r.observation and "[button] Buy Now [button_]" in r.observation
    env.step("click[9]")
    r = env.step("click[black]")
    assert "[clicked button] 9 [clicked button_]" in r.observation  # options stay selected
    r = env.step("click[Description]")
    assert "Description: Men's lightweight running shoes" in r.observation
    env.step("click[< Prev]")
    r = env.step("click[Buy Now]")
    assert r.done and r.reward == 1.0 and r.info["won"] and r.info["score"] == 100.0
    assert shop.purchases[-1] == ("fixed_0", "B0001", {"size": "9", "color": "black"}, 1.0)
    env.close()


def test_wrong_purchases_score_by_the_reward_rule_and_bad_actions_cost_nothing(shop):
    from agentdistill.envs.webshop import WebShopEnv

    env = WebShopEnv(url=shop.url)
    env.reset(Task("webshop", "shop", 0, "test"))
    assert env.step("buy the shoes").observation.startswith("Invalid action")
    env.step("search[shoes sole]")  # 3 results, 2 per page
    assert env.step("click[B0042]").observation.startswith("Invalid action: no button")
    r = env.step("click[Next >]")
    assert "Page 2" in r.observation
    env.step("click[< Prev]")
    env.step("click[B0002]")
    env.step("click[9]")
    r = env.step("click[Buy Now]")
    # type 1; attributes 0/2; options: size 9 of {size 9, color black} = 1/2; price 80 > 50 -> 0
    assert r.done and r.reward == pytest.approx(round((2 * 0 + 2 * 0.5 + 0) / 5, 4)) and not r.info["won"]
    env.close()


def test_an_episode_through_the_runner_with_a_scripted_agent(shop, tmp_path, monkeypatch):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store
    from agentdistill.testing import OpenAIStub

    def agent(body):
        obs = body["messages"][-1]["content"]
        if "[button] Search [button_]" in obs:
            return "Thought: search first\nAction: search[red cotton t-shirt]"
        if "[button] B0003 [button_]" in obs:
            return "Action: click[B0003]"
        if "[clicked button] red" in obs and "[clicked button] large" in obs:
            return "Action: click[Buy Now]"
        if "[clicked button] large" in obs:
            return "Action: click[red]"
        return "Action: click[large]"

    monkeypatch.setenv("WEBSHOP_URL", shop.url)
    store = Store.open(str(tmp_path / "s.db"))
    with OpenAIStub(reply=agent) as stub:
        run_id = run_recipe(store, parse_recipe({
            "env": {"name": "webshop", "split": "test", "variations": 2, "options": {"url": shop.url}},
            "student": {"model": "openai/shopper", "api_base": stub.url, "max_retries": 0, "history": 0},
            "runner": {"max_steps": 8}}), progress=False)
    eps = {e.task.variation: e for e in store.episodes(run_id=run_id, with_steps=True)}
    won = eps[1]  # goal 1: the red cotton t-shirt in large
    assert won.success and won.score == 100.0
    assert [s.action for s in sorted(won.steps, key=lambda s: s.idx)] == [
        "search[red cotton t-shirt]", "click[B0003]", "click[large]", "click[red]", "click[Buy Now]"]
    assert not eps[0].success  # the same script buys the wrong thing for goal 0


def test_envs_check_explains_a_missing_server(tmp_path):
    r = run_cli("envs", "check", "webshop", env={"WEBSHOP_URL": "http://127.0.0.1:9"})
    out = " ".join(r.stdout.split())
    assert "WebShop server at http://127.0.0.1:9" in out and "missing" in out and "set WEBSHOP_URL" in out
