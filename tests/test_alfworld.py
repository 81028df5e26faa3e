"""ALFWorld on the real `alfworld` package with the sample games in ../shared/data/alfworld-sample."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("alfworld", reason="pip install alfworld (or agentdistill[alfworld])")
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alfworld-sample"
pytestmark = pytest.mark.skipif(not (SAMPLE / "json_2.1.1").is_dir(),
                                reason=f"ALFWorld sample games not found at {SAMPLE}")


@pytest.mark.parametrize("expert", ["handcoded", "planner"])
def test_alfworld_experts_win_the_sample_games_and_a_student_episode_is_stored(expert, tmp_path):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    roles = {"teacher": {"policy": "expert"}}
    if expert == "handcoded":
        roles["student"] = {"model": "local/smollm2-135m", "max_tokens": 24, "history": 1, "max_steps": 2}
    run_id = run_recipe(store, parse_recipe({
        "env": {"name": "alfworld", "split": "train", "variations": 5,
                "options": {"data": str(SAMPLE), "expert": expert}},
        **roles, "runner": {"concurrency": 2, "max_steps": 60}}), progress=False)
    eps = store.episodes(run_id=run_id, with_steps=True)
    teacher = [e for e in eps if e.role == "teacher"]
    assert sorted(e.task.name for e in teacher) == [
        "pick_and_place_simple", "pick_clean_then_place_in_recep", "pick_cool_then_place_in_recep",
        "pick_heat_then_place_in_recep"]
    assert all(e.status == "done" and e.success and e.score == 100.0 for e in teacher), [e.error for e in teacher]
    assert all(e.task.goal for e in teacher)  # "put a clean mug in coffeemachine." etc.
    for e in (e for e in eps if e.role == "student"):
        assert e.status == "done" and e.n_steps == 2 and e.steps[0].calls


def test_alfworld_splits_tasks_and_missing_data_are_explained(monkeypatch, tmp_path):
    from agentdistill.envs import check, make
    from agentdistill.errors import ConfigError

    env = make("alfworld", data=str(SAMPLE))
    try:
        assert len(env.tasks("train")) == 4 and env.tasks("valid_unseen") == [] and env.tasks("test") == []
        (t,) = env.tasks("train", ["pick_heat_then_place_in_recep"])
        obs = env.reset(t)
        assert "heat" in obs.goal and "go to microwave 1" in env.admissible_actions()
        assert env.expert_action() == "look"  # ALFWorld's hand-coded expert starts by looking
        with pytest.raises(ConfigError, match="unknown ALFWorld task type"):
            env.tasks("train", ["boil_water"])
    finally:
        env.close()
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setenv("AGENTDISTILL_CACHE", str(tmp_path / "cache"))  # no games the install script copied
    status = check("alfworld")
    assert not status.ready and "alfworld-download" in status.missing()


def test_games_generated_from_a_scene_have_disjoint_splits_and_are_won_through_the_adapter(tmp_path):
    import json

    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.envs.alfworld_gen import Scene, generate, source_games, used_signatures
    from agentdistill.store.store import Store

    out = tmp_path / "gen"
    sources = source_games(SAMPLE)
    train = generate(sources, out, "train", 3, seed=0)
    test = generate(sources, out, "valid_unseen", 2, seed=0)  # same seed: the splits still differ
    assert len(train.games) == 3 and len(test.games) == 2
    used = used_signatures(out)
    assert sorted(used.values()) == ["train"] * 3 + ["valid_unseen"] * 2  # no goal in two splits
    for game in train.games + test.games:
        data = json.loads(game.read_text())
        traj = json.loads(game.with_name("traj_data.json").read_text())
        assert data["solvable"] is True and game.with_name("initial_state.pddl").read_text() == data["pddl_problem"]
        params = traj["pddl_params"]
        scene = Scene(data["pddl_problem"])
        # the goal in the PDDL and the task text both name the sampled object and receptacle
        assert f"(objectType ?o {params['object_target']}Type)" in data["pddl_problem"] or \
            f"(objectType ?o1 {params['object_target']}Type)" in data["pddl_problem"]
        assert params["object_target"].lower() in data["grammar"] and params["parent_target"].lower() in data["grammar"]
        assert game.parent.parent.name.startswith(f"{traj['task_type']}-{params['object_target']}-None-")
        if "->" in traj["agentdistill_goal"]:  # a relocated object really moved
            obj, recep = traj["agentdistill_goal"].rsplit("|", 1)[1].split("->")
            assert f"(inReceptacle {obj} {recep})" in data["pddl_problem"]
            assert recep in scene.in_recep[obj]

    # a user points ALFWORLD_DATA (the env option data) at the generated games: the other expert wins them
    store = Store.open(str(tmp_path / "s.db"))
    run_id = run_recipe(store, parse_recipe({
        "env": {"name": "alfworld", "split": "test", "options": {"data": str(out), "expert": "handcoded"}},
        "teacher": {"policy": "expert"}, "runner": {"max_steps": 60}}), progress=False)
    eps = store.episodes(run_id=run_id)
    assert len(eps) == 2 and all(e.success for e in eps), [e.error for e in eps]
