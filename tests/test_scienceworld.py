"""The ScienceWorld adapter on the real jar: splits, expert episodes, admissible actions."""

import pytest

from agentdistill.envs import Task
from agentdistill.errors import ConfigError


def test_thirty_tasks_with_disjoint_splits(sw_env):
    assert len(sw_env.task_names) == 30
    splits = {s: {t.variation for t in sw_env.tasks(s, ["power-component"])} for s in ("train", "dev", "test")}
    assert all(splits.values())
    assert not (splits["train"] & splits["test"]) and not (splits["dev"] & splits["test"])


@pytest.mark.parametrize("name", ["lifespan-longest-lived", "power-component", "identify-life-stages-2", "find-living-thing"])
def test_expert_gold_path_completes_the_task(sw_env, name):
    task = sw_env.tasks("test", [name])[0]
    obs = sw_env.reset(task)
    assert obs.goal.startswith("Your task is") and obs.text
    steps, result = 0, None
    while (action := sw_env.expert_action()) is not None:
        result = sw_env.step(action)
        steps += 1
        if result.done:
            break
    assert result.done and result.info == {"score": 100, "won": True}
    assert steps == obs.info["gold_length"] or result.done


def test_admissible_actions_contain_the_expert_action(sw_env):
    sw_env.reset(sw_env.tasks("test", ["power-component"])[0])
    sw_env.step(sw_env.expert_action())  # "look around"
    assert sw_env.expert_action() in sw_env.admissible_actions()


def test_unknown_action_is_an_observation_not_a_crash(sw_env):
    sw_env.reset(Task("scienceworld", "lifespan-longest-lived", sw_env.tasks("test", ["lifespan-longest-lived"])[0].variation))
    r = sw_env.step("dance wildly")
    assert "No known action" in r.observation and r.info["score"] == 0 and not r.done


def test_bad_task_and_split_names(sw_env):
    with pytest.raises(ConfigError, match="unknown ScienceWorld task"):
        sw_env.tasks("test", ["boil-the-ocean"])
    with pytest.raises(ConfigError, match="use train, dev or test"):
        sw_env.tasks("validation")
