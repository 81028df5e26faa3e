"""DAgger from black-box teachers on real TextWorld games with real SmolLM2 training (TRL on CPU), and
checkpoint selection on the dev split."""

from __future__ import annotations

import pytest

pytest.importorskip("textworld", reason="pip install textworld")

from .conftest import run_cli  # noqa: E402

EASY = {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 2}


def _recipe(dagger: dict, collect: int = 8) -> dict:
    return {"name": "dagger-test", "env": EASY, "teacher": {"policy": "expert", "price": {"per_action": 0.003}},
            "student": {"model": "local/smollm2-135m", "max_tokens": 24, "history": 2},
            "runner": {"concurrency": 2, "max_steps": 5}, "collect": {"variations": collect},
            "distill": [{"name": "sft", "method": "sft", "epochs": 1, "learning_rate": 1e-3, "dev_variations": 0},
                        {"name": "dagger", "method": "dagger", "init": "sft", **dagger}]}


@pytest.fixture(scope="module")
def expert_round(tmp_path_factory):
    """SFT on the expert's episodes, then two DAgger rounds labelled by TextWorld's expert: round 1 executes the
    teacher's action at every state (beta 1), round 2 the student's (beta decayed to 0)."""
    from agentdistill.config import parse_recipe
    from agentdistill.pipeline import run_pipeline
    from agentdistill.store.store import Store

    tmp = tmp_path_factory.mktemp("dagger")
    store = Store.open(str(tmp / "s.db"))
    recipe = parse_recipe({**_recipe({"rounds": 2, "episodes_per_round": 4, "beta": 1.0, "beta_decay": 0.0,
                                      "epochs": 1, "dev_variations": 2}), "workdir": str(tmp / "work")})
    run_id = run_pipeline(store, recipe, progress=False, say=lambda s: None)
    outputs = {st.name: st.outputs for st in store.stages(run_id)}
    return store, outputs


@pytest.mark.slow
def test_expert_labels_are_the_games_policy_at_the_students_states_and_the_dataset_grows(expert_round):
    from agentdistill.envs import make
    from agentdistill.envs.base import Task
    from agentdistill.store.models import Checkpoint, Dataset

    store, outputs = expert_round
    out = outputs["distill.dagger"]
    (ckpt,) = [c for c in _rows(store, Checkpoint) if c.id == out["checkpoint_id"]]
    assert ckpt.method == "dagger"
    rounds = ckpt.metrics["rounds"]
    assert [r["beta"] for r in rounds] == [1.0, 0.0]
    episodes = store.episodes(run_id=out["run_id"], with_steps=True, with_calls=False)
    assert len(episodes) == 8
    labels = store.labels([ep.id for ep in episodes])
    steps = [(ep, st) for ep in episodes for st in ep.steps]
    assert steps and len(labels) >= len(steps) - len(episodes)  # a won game's last state may have no policy
    # every label equals the game's own policy_commands at the state the student reached: replay each episode
    env = make("textworld")
    try:
        checked = 0
        for ep in episodes:
            env.reset(Task(ep.task.env, ep.task.name, ep.task.variation, ep.task.split), ep.seed)
            for st in sorted(ep.steps, key=lambda s: s.idx):
                label = labels.get((ep.id, st.idx))
                assert (label.action if label else None) == env.expert_action()
                checked += label is not None
                env.step(st.action)
    finally:
        env.close()
    assert checked == len(labels)
    first = [st for ep in episodes[:4] for st in ep.steps]
    assert all(st.info.get("teacher_executed") and st.answered_by == "expert" for st in first)  # beta 1
    assert not any(st.info.get("teacher_executed") for ep in episodes[4:] for st in ep.steps)  # beta 0
    assert all(lab.labeller == "expert" and lab.cost == 0.003 for lab in labels.values())
    assert out["label_cost"] == pytest.approx(0.003 * len(labels))
    # the aggregated dataset grows round by round, starting from the SFT data, and every round's is stored
    sft_rows = next(d.n_rows for d in _rows(store, Dataset) if d.id == outputs["distill.sft"]["dataset_id"])
    dagger_sets = sorted((d for d in _rows(store, Dataset) if d.kind == "dagger"), key=lambda d: d.id)
    assert [d.filters["round"] for d in dagger_sets] == [1, 2]
    assert sft_rows < dagger_sets[0].n_rows < dagger_sets[1].n_rows
    assert set(dagger_sets[0].episode_ids) < set(dagger_sets[1].episode_ids)
    # the kept checkpoint is the best on dev among the start and both rounds (ties: the earliest)
    cands = ckpt.metrics["candidates"]
    assert [c["name"] for c in cands] == ["init", "round-1", "round-2"]
    top = max(c["dev_success"] for c in cands)
    assert ckpt.metrics["kept"]["name"] == next(c["name"] for c in cands if c["dev_success"] == top)
    assert out["kept"] == ckpt.metrics["kept"]["name"]


@pytest.mark.slow
def test_a_dagger_round_with_a_local_llm_teacher_labels_the_students_own_prompts(tmp_path):
    """The teacher is a local model answering exactly the prompt the student saw; its call and cost are stored."""
    from agentdistill.config import parse_recipe
    from agentdistill.pipeline import run_pipeline
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe({**_recipe({"teacher": "local/smollm2-135m", "rounds": 1, "episodes_per_round": 2,
                                      "epochs": 1, "dev_variations": 0}, collect=4),
                           "workdir": str(tmp_path / "work")})
    run_id = run_pipeline(store, recipe, progress=False, say=lambda s: None)
    out = {st.name: st.outputs for st in store.stages(run_id)}["distill.dagger"]
    episodes = store.episodes(run_id=out["run_id"], with_steps=True, with_calls=True)
    labels = store.labels([ep.id for ep in episodes])
    assert labels and out["labels"] == len(labels)
    for ep in episodes:
        for st in ep.steps:
            label = labels.get((ep.id, st.idx))
            if label is None:  # a teacher reply with no action labels nothing
                continue
            assert label.labeller == "local/smollm2-135m"
            (call,) = label.calls
            assert call["messages"] == st.calls[0].messages  # the student's own prompt at that state
            assert call["params"]["temperature"] == 0.0
            assert label.raw_output == call["outputs"][0]


def test_dagger_with_scienceworlds_open_loop_expert_is_refused_in_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("""
[env]
name = "scienceworld"
tasks = ["power-component"]
[teacher]
policy = "expert"
[student]
model = "local/smollm2-135m"
[collect]
variations = 2
[[distill]]
name = "sft"
method = "sft"
[[distill]]
name = "dagger"
method = "dagger"
init = "sft"
""")
    db = tmp_path / "s.db"
    p = run_cli("run", str(path), "--db", str(db))
    assert p.returncode != 0
    lines = (p.stderr.strip() + "\n" + p.stdout.strip()).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr + p.stdout
    assert "open-loop" in lines[0] and "distill.1" in lines[0]
    assert not db.exists() or _count_runs(db) == 0


def test_dagger_options_are_checked_before_anything_runs():
    from agentdistill.config import parse_recipe
    from agentdistill.errors import ConfigError

    for bad, where in (({"beta": 1.5}, "distill.1.dagger.beta"), ({"label": "some"}, "distill.1.dagger.label"),
                       ({"rounds": 0}, "distill.1.dagger.rounds"), ({"teacher": "nope"}, "distill.1")):
        with pytest.raises(ConfigError) as e:
            parse_recipe(_recipe(bad))
        assert str(e.value).startswith(f"recipe: {where}"), str(e.value)
        assert "\n" not in str(e.value)


def test_first_error_keeps_the_states_up_to_the_students_first_mistake():
    from types import SimpleNamespace as NS

    from agentdistill.train.data import labelled_conversations

    steps = [NS(idx=i, observation=f"room {i}", action=a, thought=None) for i, a in enumerate(["go east", "take key",
                                                                                                "look", "open box"])]
    ep = NS(id=1, steps=steps, task=NS(env="textworld", goal="open the box"))
    labels = {0: NS(action="go east", thought=None), 1: NS(action="open door", thought=None),
              2: NS(action="look", thought=None), 3: NS(action="open box", thought=None)}
    every = labelled_conversations(ep, labels, window=2, mode="all")
    first = labelled_conversations(ep, labels, window=2, mode="first_error")
    assert [c.step_idx[-1] for c in every] == [0, 1, 2, 3]
    assert [c.step_idx[-1] for c in first] == [0, 1]
    # the labelled turn is the teacher's action after the executed history; only it carries loss
    last = first[-1]
    assert last.messages[-1]["content"] == "Action: open door"
    assert last.messages[-3]["content"] == "Action: go east" and last.train == [False, True]


def _rows(store, model):
    from sqlalchemy import select

    with store.session() as s:
        return list(s.scalars(select(model)))


def _count_runs(db) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
def test_selection_keeps_the_better_of_two_candidates_when_one_is_degraded(tmp_path):
    """A student that learnt two dev games by heart (SFT on their expert episodes) against a copy of it with noise
    on every LoRA weight, on those games: selection keeps the first, whichever order they come in."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from agentdistill.agents.policies import LLMPolicy
    from agentdistill.agents.rollout import first_variations, run_recipe
    from agentdistill.agents.runner import EnvPool
    from agentdistill.config import parse_recipe
    from agentdistill.envs import make
    from agentdistill.models import make_model
    from agentdistill.models.registry import release_in_process_models
    from agentdistill.store.store import Store
    from agentdistill.train.data import EpisodeFilter, build_sft_dataset
    from agentdistill.train.model import LoraSpec, base_checkpoint
    from agentdistill.train.selection import Candidate, DevSet, best
    from agentdistill.train.sft import SFTSpec, train_sft

    store = Store.open(str(tmp_path / "s.db"))
    run_recipe(store, parse_recipe({"env": {"name": "textworld", "split": "dev", "tasks": ["easy"], "variations": 2},
                                    "teacher": {"policy": "expert"}, "runner": {"max_steps": 5}}), progress=False)
    tok = AutoTokenizer.from_pretrained(base_checkpoint("local/smollm2-135m"))
    _, ds = build_sft_dataset(store, tok, tmp_path / "data", EpisodeFilter(env="textworld"), window=2, unit="steps")
    good_dir = tmp_path / "good"
    train_sft(store, ds, good_dir, SFTSpec(lora=LoraSpec(), epochs=12, learning_rate=2e-3, batch_size=2))
    bad_dir = tmp_path / "degraded"
    shutil.copytree(good_dir, bad_dir)
    weights = load_file(bad_dir / "adapter_model.safetensors")
    noise = torch.Generator().manual_seed(0)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=noise) for k, v in weights.items()},
              str(bad_dir / "adapter_model.safetensors"))
    env = make("textworld")
    dev = DevSet(first_variations(env, "dev", ["easy"], 2), lambda m: LLMPolicy(make_model(m), 0.0, 24, 1, 2), 5,
                 EnvPool(lambda: make("textworld"), 2, env), 2)
    try:
        good = dev.score(store, Candidate("good", f"local/{good_dir}"), "select-test-good")
        release_in_process_models()
        bad = dev.score(store, Candidate("degraded", f"local/{bad_dir}"), "select-test-degraded")
        release_in_process_models()
    finally:
        dev.pool.close()
    assert good.dev_success == 1.0, "SFT for 12 epochs on two games' expert steps should win them"
    assert bad.dev_success < good.dev_success
    assert best([good, bad]) is good and best([bad, good]) is good
    assert store.get_run(good.dev_run).kind == "select"


def test_train_dagger_command_takes_the_configs_fields_and_refuses_bad_ones_in_one_line(tmp_path):
    db = tmp_path / "s.db"
    for args, fragment in ((["--beta", "2"], "--beta"), (["--label", "some"], "--label"),
                           (["--env", "scienceworld"], "open-loop")):
        p = run_cli("train", "dagger", str(tmp_path / "out"), "--db", str(db), *args)
        lines = (p.stderr.strip() + "\n" + p.stdout.strip()).strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and fragment in lines[0], p.stderr + p.stdout
        assert "Traceback" not in p.stderr
        assert not db.exists() or _count_runs(db) == 0


@pytest.mark.slow
def test_train_dagger_command_runs_a_round_from_the_expert(tmp_path):
    """`agentdistill train dagger` end to end: one round of two student episodes on TextWorld, labelled by the
    expert, a checkpoint written and recorded."""
    db = tmp_path / "s.db"
    out = tmp_path / "dagger"
    p = run_cli("train", "dagger", str(out), "--db", str(db), "--env", "textworld", "--task", "easy",
                "--variations", "2", "--rounds", "1", "--episodes-per-round", "2", "--eval-steps", "4",
                "--no-teacher-data", "--epochs", "1", "--dev-variations", "0")
    assert p.returncode == 0, p.stderr
    assert "labels by expert" in p.stdout and "kept round-1" in p.stdout, p.stdout
    from agentdistill.store.models import Checkpoint
    from agentdistill.store.store import Store

    store = Store.open(str(db))
    (ckpt,) = _rows(store, Checkpoint)[-1:]
    assert ckpt.method == "dagger" and ckpt.metrics["labels"] > 0 and (out / "round-1").is_dir()
