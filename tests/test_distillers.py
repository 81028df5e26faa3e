"""Skill distillers on real ScienceWorld trajectories in the store (expert and SmolLM2 episodes)."""

from __future__ import annotations

import json

import pytest

from agentdistill.skills import library
from agentdistill.skills.trace2skill import LLMAnalyst, TraceAnalyst, distill, parse_ops_json
from agentdistill.testing import OpenAIStub

TASK = "power-component"


@pytest.fixture(scope="module")
def traj_store(tmp_path_factory):
    """Expert episodes (successes) and SmolLM2 episodes (failures) of one task family."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path_factory.mktemp("distill") / "s.db"))
    run_recipe(store, parse_recipe({
        "env": {"split": "train", "tasks": [TASK], "variations": 2},
        "teacher": {"policy": "expert"},
        "student": {"model": "local/smollm2-135m", "max_tokens": 24, "history": 2, "max_steps": 4},
        "runner": {"max_steps": 40}}), progress=False)
    return store


def episodes(store):
    from agentdistill.train.data import EpisodeFilter

    return EpisodeFilter(role=None, success=None, tasks=[TASK]).select(store)


def test_trace2skill_builds_a_valid_versioned_pack_from_real_trajectories(traj_store):
    from skills_ref import validate

    eps = episodes(traj_store)
    assert {bool(e.success) for e in eps} == {True, False}  # both analysts have work
    r = distill(traj_store, eps, name="power-component", analyst=TraceAnalyst())
    v = r.version
    assert v.version == 1 and v.distiller == "trace2skill" and v.metrics["episodes"] == [e.id for e in eps]
    meta = v.pack.metadata
    assert meta["distiller"] == "trace2skill" and meta["trajectories"] == str(len(eps))
    assert set(meta["source-runs"].split(",")) == {e.run_id for e in eps}
    body = v.pack.body
    expert = next(e for e in eps if e.success)
    lean = " -> ".join(f"`{s.action}`" for s in sorted(expert.steps, key=lambda s: s.idx))
    assert lean in body  # the success analyst's lean path of a gold trajectory is the trajectory itself
    assert "## Pitfalls\n- " in body  # the error analyst found something in the SmolLM2 episodes
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        assert validate(v.pack.write(Path(d) / v.name)) == []
    # deepening with the same evidence adds nothing twice: every operation is skipped, no new version
    again = distill(traj_store, eps, name="power-component", analyst=TraceAnalyst(), mode="deepen")
    assert again.version.id == v.id and len(again.skipped) == r.proposed - len(r.dropped)
    # deepening with new evidence (only the failures now) makes v2 on top of v1
    failures = [e for e in eps if not e.success]
    deeper = distill(traj_store, failures[:1], name="power-component", analyst=TraceAnalyst(), mode="deepen")
    assert (deeper.version.version, deeper.version.parent_id) == (2, v.id)  # provenance metadata changed
    assert deeper.version.pack.metadata["trajectories"] == "1" and deeper.version.pack.body.count(lean) == 1


def test_llm_analysts_patches_are_parsed_merged_and_applied(traj_store):
    """Analysts through an OpenAI-compatible endpoint (a scripted stand-in for an API model)."""
    def reply(body):
        prompt = body["messages"][0]["content"]
        if "You are the success analyst" in prompt:
            return "Here is my patch:\n```json\n" + json.dumps([
                {"op": "append_to_section", "section": "Procedure", "text": "1. Go to the workshop."},
                {"op": "add_section", "section": "Circuit", "text": "Connect anode and cathode through wires."},
                {"op": "frobnicate"},  # not an operation: reported, not applied
            ]) + "\n```"
        return json.dumps([
            {"op": "append_to_section", "section": "Pitfalls", "text": "- Act with commands, not prose."},
            {"op": "add_section", "section": "Circuit", "text": "Never connect a wire to itself."},  # conflict
        ])

    from agentdistill.models import make_model

    with OpenAIStub(reply=reply) as stub:
        model = make_model("openai/analyst", api_base=stub.url, max_retries=0)
        r = distill(traj_store, episodes(traj_store), name="circuits", analyst=LLMAnalyst(model))
    eps = episodes(traj_store)
    n_ok, n_bad = sum(bool(e.success) for e in eps), sum(not e.success for e in eps)
    assert r.proposed == 2 * n_ok + 2 * n_bad and len(r.invalid) == n_ok
    body = r.version.pack.body
    assert body.count("1. Go to the workshop.") == 1 and body.count("- Act with commands, not prose.") == 1
    # the success analysts' Circuit section has more support than the error analysts' one
    assert "Connect anode and cathode" in body and "Never connect a wire to itself" not in body
    assert r.version.pack.validate() == [] and r.version.pack.metadata["analyst"] == "openai/analyst"


def test_parse_ops_json_tolerates_prose_and_rejects_garbage():
    assert parse_ops_json('sure! [{"op": "delete_section", "section": "X"}] done') == [
        {"op": "delete_section", "section": "X"}]
    assert parse_ops_json("I cannot help with that") == []
    assert parse_ops_json("[not json]") == []
