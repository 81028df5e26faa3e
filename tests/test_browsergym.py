"""BrowserGym adapter: MiniWoB++ episodes in the system Chromium (offline), VisualWebArena's configuration."""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("browsergym.miniwob", reason="pip install browsergym-miniwob miniwob")

from agentdistill.envs.browsergym import (  # noqa: E402
    MiniWoBEnv, VisualWebArenaEnv, browser_setup, chromium_requirement, miniwob_task_names)
from agentdistill.envs.miniwob_expert import NEXT, next_action, parse_tree  # noqa: E402

needs_chromium = pytest.mark.skipif(not chromium_requirement().ok, reason="no Chromium: apt-get install chromium")
pytestmark = [pytest.mark.browser]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLAYWRIGHT_BROWSERS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no playwright download in ~/.cache: the system chromium
    return tmp_path / "cache"


@needs_chromium
def test_system_chromium_stands_in_for_playwrights_download(cache):
    env_vars, launch = browser_setup()
    root = cache / "playwright-browsers"
    assert env_vars == {"PLAYWRIGHT_BROWSERS_PATH": str(root)}
    (chrome,) = root.glob("chromium-*/chrome-linux/chrome")
    assert chrome.is_symlink() and os.path.realpath(chrome) == os.path.realpath(launch["executable_path"])
    assert (chrome.parent.parent / "INSTALLATION_COMPLETE").exists()
    assert browser_setup() == (env_vars, launch)  # idempotent


@needs_chromium
def test_browser_setup_is_safe_when_many_envs_start_at_once(cache, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(40):  # a fresh cache each round: the first setup is the racy one
        monkeypatch.setenv("AGENTDISTILL_CACHE", str(cache / str(round_)))
        start = threading.Barrier(8)

        def setup(_):
            start.wait()  # the runner's env pool starts its instances at the same moment
            return browser_setup()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(setup, range(8)))
        assert all(r == results[0] for r in results)
        assert [p.name for p in (cache / str(round_) / "playwright-browsers").glob("chromium-*/chrome-linux/*")] == [
            "chrome"]


@needs_chromium
@pytest.mark.slow
def test_miniwob_expert_wins_in_chromium_and_episodes_are_stored(cache, tmp_path):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    tasks = ["click-button", "enter-text", "login-user", "click-checkboxes", "choose-list"]
    run_id = run_recipe(store, parse_recipe({
        "env": {"name": "miniwob", "split": "test", "tasks": tasks, "variations": 2},
        "teacher": {"policy": "expert"},
        "runner": {"concurrency": 2, "max_steps": 8}}), progress=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    assert len(eps) == 10
    assert all(e.status == "done" and e.success and e.score == 100.0 for e in eps), [(e.task_id, e.error) for e in eps]
    login = next(e for e in eps if e.steps[0].observation.count("textbox") == 2 and "Login" in e.steps[0].observation)
    assert [s.action.split("(")[0] for s in login.steps] == ["fill", "fill", "click"]
    assert login.steps[-1].reward == 1.0 and login.steps[-1].done


@needs_chromium
@pytest.mark.slow
def test_llm_policy_acts_with_browsergym_actions(cache, tmp_path):
    """An OpenAI-compatible model (a scripted stand-in) reads the tree and answers click('<id>')."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store
    from agentdistill.testing import OpenAIStub

    def reply(body):
        prompt = body["messages"][-1]["content"]
        goal = re.search(r'Click on the "(.+?)" button', "\n".join(m["content"] for m in body["messages"]))
        bid = re.search(r"\[(\w+)\] button '" + re.escape(goal[1]) + "'", prompt)[1]
        return f"Thought: the goal names this button.\nAction: click('{bid}')"

    store = Store.open(str(tmp_path / "s.db"))
    with OpenAIStub(reply=reply) as stub:
        run_id = run_recipe(store, parse_recipe({
            "env": {"name": "miniwob", "split": "dev", "tasks": ["click-button"], "variations": 2},
            "student": {"model": "openai/stub", "api_base": stub.url, "max_retries": 0, "history": 1},
            "runner": {"max_steps": 3}}), progress=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    assert len(eps) == 2 and all(e.success for e in eps)
    assert all(re.fullmatch(r"click\('\w+'\)", e.steps[0].action) and e.steps[0].calls for e in eps)
    system = stub.seen[0]["body"]["messages"][0]["content"]
    assert "fill('14', 'some text')" in system  # the env's action help reached the model


@needs_chromium
def test_screenshots_bad_actions_and_a_dead_worker(cache, tmp_path):
    from PIL import Image

    from agentdistill.envs import make
    from agentdistill.errors import EnvNotReady

    env = make("miniwob", screenshot=True, screenshot_dir=str(tmp_path / "shots"))
    try:
        task = env.tasks("train", ["enter-text"])[0]
        obs = env.reset(task)
        assert obs.goal.startswith("Enter ") and "textbox" in obs.text and obs.text.startswith("URL: file://")
        with Image.open(obs.info["screenshot"]) as im:
            assert im.size[0] > 100 and im.size[1] > 100
        bad = env.step("click('no-such-element')")  # BrowserGym reports the error; the episode goes on
        assert not bad.done and bad.info["action_error"] and "Error from the last action" in bad.observation
        nonsense = env.step("please click the button")
        assert not nonsense.done and nonsense.info["action_error"]
        env._worker.proc.kill()  # a crashed browser worker: a clear error, then a fresh worker on reset
        with pytest.raises(EnvNotReady, match="worker died"):
            env.step("noop()")
        again = env.reset(task)
        assert again.goal == obs.goal and again.text == obs.text  # same seed, same page
    finally:
        env.close()


def test_expert_plans_from_goal_and_tree():
    tree = ("RootWebArea 'Login User Task', focused\n\t[16] textbox ''\n\t[19] textbox ''\n"
            "\t[20] button 'Login'\n\t[21] checkbox \"it's\", checked='false'")
    assert [n.bid for n in parse_tree(tree)] == ["16", "19", "20", "21"]
    goal = 'Enter the username "kenda" and the password "Ttlh" into the text fields and press login.'
    assert next_action("login-user", goal, tree) == "fill('16', 'kenda')"
    assert next_action("click-button", 'Click on the "ok" button.', tree) is None  # no such button: no expert
    assert next_action("book-flight", "Book the shortest one-way flight", tree) is None  # not a scripted task
    assert set(NEXT) <= set(miniwob_task_names())


def test_action_help_names_only_actions_of_the_configured_action_set():
    from browsergym.core.action.highlevel import HighLevelActionSet

    for cls in (MiniWoBEnv, VisualWebArenaEnv):
        known = set(HighLevelActionSet(subsets=cls.action_subsets, multiaction=False).action_set)
        used = set(re.findall(r"\b([a-z_]+)\(", cls.action_help))
        assert used and used <= known, (cls.name, used - known)


def test_miniwob_tasks_splits_and_bad_names(cache):
    from agentdistill.errors import ConfigError

    env = MiniWoBEnv(variations_per_split=3)
    train, test = env.tasks("train"), env.tasks("test", ["click-button"])
    assert len({t.name for t in train}) > 100 and [t.variation for t in test] == [2000, 2001, 2002]
    assert not {t.variation for t in train} & {t.variation for t in test}
    with pytest.raises(ConfigError, match="unknown MiniWoB task 'click-buton'"):
        env.tasks("test", ["click-buton"])
    with pytest.raises(ConfigError, match="unknown MiniWoB split"):
        env.tasks("validation")


def test_visualwebarena_configuration_without_sites(monkeypatch):
    from agentdistill.envs import registry
    from agentdistill.errors import EnvNotReady

    for var in ("VWA_CLASSIFIEDS", "VWA_SHOPPING", "VWA_REDDIT", "VWA_WIKIPEDIA", "VWA_HOMEPAGE",
                "VWA_CLASSIFIEDS_RESET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    status = registry.check("visualwebarena")
    assert not status.ready
    missing = status.missing()
    assert "$VWA_CLASSIFIEDS (unset)" in missing and "agentdistill envs up visualwebarena" in missing
    with pytest.raises(EnvNotReady, match="environment 'visualwebarena' is not ready"):
        registry.make("visualwebarena")
    monkeypatch.setenv("VWA_SHOPPING", "http://127.0.0.1:9")  # set but nothing listens
    shopping = next(r for r in registry.check("visualwebarena").requirements if "VWA_SHOPPING" in r.what)
    assert not shopping.ok and "127.0.0.1:9" in shopping.what
    env = VisualWebArenaEnv()
    tasks = env.tasks("test")
    assert len(tasks) == 910 and env.gym_task_id(tasks[7]) == "visualwebarena.7"


def test_expert_reads_the_current_page_and_answers_from_any_state():
    goal = 'Enter the username "kenda" and the password "Ttlh" into the text fields and press login.'
    blank = "\t[16] textbox ''\n\t[19] textbox ''\n\t[20] button 'Login'"
    assert next_action("login-user", goal, blank) == "fill('16', 'kenda')"
    half = "\t[16] textbox '' value='kenda', focused\n\t[19] textbox ''\n\t[20] button 'Login'"
    assert next_action("login-user", goal, half) == "fill('19', 'Ttlh')"
    wrong = "\t[16] textbox '' value='kend'\n\t[19] textbox '' value='••••'\n\t[20] button 'Login'"
    assert next_action("login-user", goal, wrong) == "fill('16', 'kenda')"  # another policy's typo is redone
    done = "\t[16] textbox '' value='kenda'\n\t[19] textbox '' value='••••'\n\t[20] button 'Login'"
    assert next_action("login-user", goal, done) == "click('20')"
    boxes = ("\t[18] checkbox 'JE4O', checked='false'\n\t[21] checkbox '1lA', focused, checked='true'\n"
             "\t[24] button 'Submit'")
    assert next_action("click-checkboxes", "Select JE4O and click Submit.", boxes) == "click('18')"
    fixed = boxes.replace("checked='false'", "checked='true'")
    assert next_action("click-checkboxes", "Select JE4O and click Submit.", fixed) == "click('21')"  # unchecked
    assert next_action("click-checkboxes", "Select JE4O, 1lA and click Submit.", fixed) == "click('24')"
    assert next_action("book-flight", "Book the shortest one-way flight", blank) is None


@needs_chromium
@pytest.mark.slow
def test_expert_recovers_after_another_policys_mistakes_in_chromium(cache):
    """Mid-episode, after wrong actions, the expert still wins: it can label any state (DAgger)."""
    from agentdistill.envs.base import Task

    env = MiniWoBEnv()
    try:
        for name, mistakes in (("click-checkboxes", None), ("enter-text", "fill('{box}', 'wrong text')"),
                               ("login-user", "fill('{box}', 'nobody')")):
            obs = env.reset(Task("miniwob", name, 1003, "dev"))
            tree = parse_tree(obs.text)
            if mistakes is None:  # check every box: the wanted ones are right, the others must be unchecked
                for box in [n for n in tree if n.role == "checkbox"]:
                    env.step(f"click('{box.bid}')")
            else:
                env.step(mistakes.format(box=next(n.bid for n in tree if n.role == "textbox")))
            for _ in range(8):
                action = env.expert_action()
                assert action is not None
                result = env.step(action)
                if result.done:
                    break
            assert result.info["won"], (name, result.observation[:500])
    finally:
        env.close()
