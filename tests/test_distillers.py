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
    # the procedure is induced across the successful runs, with placeholders for what differs between them
    procedure = body.split("## Procedure")[1].split("\n## ")[0]
    assert "`connect <thing> to <target>`" in procedure and "`focus on <target>`" in procedure, procedure
    assert "battery anode" not in procedure.split("How the task's wording")[0]  # no run's objects in the steps
    # ... and the concrete runs are kept as examples in references/
    expert = next(e for e in eps if e.success)
    examples = v.pack.files["references/examples.md"]
    assert all(f"`{s.action}`" in examples for s in expert.steps)
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
    assert deeper.version.pack.metadata["trajectories"] == "1"
    assert deeper.version.pack.body.count("`connect <thing> to <target>`") == body.count("`connect <thing> to <target>`")


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


# ---- SPARK / PDI ----------------------------------------------------------------------------------
def memo(facts: str, strategy: str) -> str:
    from agentdistill.skills.spark import render_memo

    return render_memo({"Attempts Log": "- #1: FAIL", "Commands": "- x", "Verified Facts": facts,
                        "Current Error Pattern": "-", "Next Strategy": strategy}, 1)


def test_pdi_on_recorded_memos_equals_hand_computed_values():
    from agentdistill.skills.spark import PDITracker

    t = PDITracker(enabled=True, warmup=2, threshold=-0.5)
    m1 = memo("- open door works", "go to kitchen then look")
    # step 0: no previous memo -> plan = oss = 0; facts {open, door, works}, commands {open, door, to, kitchen}
    s0 = t.compute(0, m1, "", "open door to kitchen", "✗ task not completed\n✗ ended by: focus on agent", "")
    assert s0.proxy_exec == pytest.approx(2 / 3)  # 'open', 'door' of the 3 fact words are in the commands
    assert (s0.proxy_plan, s0.proxy_oss, s0.raw_pdi) == (0.0, 0.0, pytest.approx(2 / 3))
    assert (s0.weight, s0.weighted_pdi, s0.triggered) == (0.0, 0.0, False)  # warm-up: weight 0 at step 0

    m2 = memo("- open door works", "go to kitchen then look around")
    s1 = t.compute(1, m2, m1, "go to hallway", "✗ task not completed\n✗ ended by: focus on agent",
                   "✗ task not completed\n✗ ended by: focus on agent")
    assert s1.proxy_exec == 0.0  # none of {open, door, works} in {go, to, hallway}
    assert s1.proxy_plan == pytest.approx(5 / 6)  # {go,to,kitchen,then,look} vs + {around}
    assert s1.proxy_oss == pytest.approx(0.5 * 1.0 + 0.5 * 1.0)  # facts and failures unchanged
    # z-scores over two values are -1/+1: raw = z(exec) - z(plan) - z(oss) = -1 - 1 - 1
    assert s1.raw_pdi == pytest.approx(-3.0) and s1.weight == 0.5 and s1.weighted_pdi == pytest.approx(-1.5)
    assert s1.triggered and s1.level == "soft"  # weighted -1.5 < threshold -0.5

    s2 = t.compute(2, m2, m2, "go to hallway", "✗ task not completed\n✗ ended by: focus on agent",
                   "✗ task not completed\n✗ ended by: focus on agent")
    # exec [2/3, 0, 0], plan [0, 5/6, 1], oss [0, 1, 1]: population z-scores of the last value
    import statistics

    def z(v, vs):
        return (v - statistics.fmean(vs)) / statistics.pstdev(vs)

    expected = z(0, [2 / 3, 0, 0]) - z(1, [0, 5 / 6, 1]) - z(1, [0, 1, 1])
    assert s2.raw_pdi == pytest.approx(expected) and s2.weighted_pdi == pytest.approx(expected)
    assert s2.triggered and s2.level == "strong"  # the previous step fired too

    observe = PDITracker(enabled=False, observe_only=True)
    observe.compute(0, m1, "", "open door", "", "")
    assert not observe.compute(1, m2, m1, "go", "✗ a", "✗ a").triggered  # measured, never acted on


def test_js_divergence_method_is_a_similarity():
    from agentdistill.skills.spark import js_similarity

    assert js_similarity("open the door", "open the door") == pytest.approx(1.0)
    assert js_similarity("open the door", "eat an apple") < 0.5
    assert js_similarity("", "x") == 0.0


def test_interventions_guide_the_next_attempt_without_naming_the_metric():
    from agentdistill.skills.spark import PDITracker, injection

    t = PDITracker(enabled=True)
    m = memo("- a", "do the same again")
    assert injection(m, t, 1, 3).count("do the same again") == 1  # nothing fired: the memo as is
    t.compute(0, m, "", "x", "✗ a", "")
    t.compute(1, m, m, "x", "✗ a", "✗ a")
    soft = injection(m, t, 2, 3)
    assert "Guidance:" in soft and "do the same again" in soft
    t.compute(2, m, m, "x", "✗ a", "✗ a")
    strong = injection(m, t, 3, 4)
    assert "Discard it" in strong and "do the same again" not in strong  # stale plan withheld
    for text in (soft, strong):
        assert "PDI" not in text and "Distillation Index" not in text and "z-score" not in text


@pytest.mark.slow
def test_spark_loop_on_scienceworld_fails_reflects_retries_and_distills(traj_store):
    """The agent is a cascade: a scripted student (OpenAI-compatible stand-in) that makes a fatal move
    until it has notes from a failed attempt, then answers nothing admissible so the expert acts."""
    from agentdistill.agents.rollout import build_policy
    from agentdistill.config import PolicySpec
    from agentdistill.envs import Task
    from agentdistill.skills.spark import distill_spark, run_spark

    def reply(body):
        system = body["messages"][0]["content"]
        return "Action: ask the manual" if "Notes from your earlier attempts" in system else "Action: focus on agent"

    with OpenAIStub(reply=reply) as stub:
        spec = PolicySpec.model_validate({"policy": "cascade", "model": "openai/student", "api_base": stub.url,
                                          "max_retries": 0, "threshold": 0.0, "fallback": {"policy": "expert"}})
        policy = build_policy(spec, traj_store)
        task = Task("scienceworld", TASK, 0, "train")
        run_id, (outcome,) = run_spark(traj_store, policy, "scienceworld", [task], max_attempts=3, max_steps=20)
        prompts = [m["content"] for r in stub.seen for m in r["body"]["messages"]]
    assert [a.status for a in outcome.attempts] == ["FAIL", "PASS"]
    first = outcome.attempts[0]
    assert first.commands == "focus on agent" and "✗ ended by: focus on agent" in first.summary
    assert "### Current Error Pattern\n- ended by: focus on agent" in outcome.memo
    assert any("Notes from your earlier attempts" in p and "focus on agent" in p for p in prompts)
    eps = traj_store.episodes(run_id=run_id)
    assert eps[0].metrics["pdi"]["step"] == 0 and eps[1].metrics["spark"]["status"] == "PASS"
    v = distill_spark(traj_store, [outcome], "power-spark", run_id)
    assert v.pack.validate() == [] and v.distiller == "spark" and v.run_id == run_id
    assert v.pack.metadata["pdi"] == f"{outcome.pdi[0].weighted_pdi:.4f}" and "references/evidence.md" in v.pack.files
    assert "PASS on attempt 2" in v.pack.files["references/evidence.md"]


def test_spark_explores_tasks_side_by_side_each_with_its_own_memo(traj_store):
    """With concurrency, tasks run at once in their own env and policy copy; each task's attempts stay in
    order under its own plan entries, and the outcomes are those of one task at a time."""
    from agentdistill.agents.rollout import build_policy
    from agentdistill.config import PolicySpec
    from agentdistill.envs import Task
    from agentdistill.skills.spark import run_spark

    def reply(body):
        system = body["messages"][0]["content"]
        return "Action: ask the manual" if "Notes from your earlier attempts" in system else "Action: focus on agent"

    tasks = [Task("scienceworld", TASK, v, "train") for v in range(3)]
    with OpenAIStub(reply=reply) as stub:
        spec = PolicySpec.model_validate({"policy": "cascade", "model": "openai/student", "api_base": stub.url,
                                          "max_retries": 0, "threshold": 0.0, "fallback": {"policy": "expert"}})
        policy = build_policy(spec, traj_store)
        run_id, outcomes = run_spark(traj_store, policy, "scienceworld", tasks, max_attempts=3, max_steps=20,
                                     concurrency=3)
    assert [o.task for o in outcomes] == tasks
    assert all([a.status for a in o.attempts] == ["FAIL", "PASS"] for o in outcomes)  # each task's own memo
    assert policy.student.context is None  # the caller's policy was never given a task's memo
    eps = {e.plan_index: e for e in traj_store.episodes(run_id=run_id)}
    assert sorted(eps) == [0, 1, 3, 4, 6, 7]  # task i's attempts are plan entries 3i, 3i + 1
    assert all(eps[3 * i].task.variation == eps[3 * i + 1].task.variation == i for i in range(3))
    assert all(eps[3 * i].metrics["spark"]["status"] == "FAIL" and eps[3 * i + 1].metrics["spark"]["status"] == "PASS"
               for i in range(3))
    # the three tasks were in flight together: each began before any had finished its last attempt
    assert max(eps[3 * i].started_at for i in range(3)) < min(eps[3 * i + 1].finished_at for i in range(3))
    assert traj_store.get_run(run_id).status == "done"


# ---- agents with skills, A/B evaluation -----------------------------------------------------------
def _pack():
    from agentdistill.skills.pack import SkillPack

    return SkillPack.new("stay-safe", "Avoid ending ScienceWorld tasks by accident.",
                         "# Stay safe\n\n## Rules\n- Never focus on the agent; look around first.")


def test_ab_evaluation_pairs_arms_and_stores_the_interval(traj_store):
    from agentdistill.skills.evaluate import ab_evaluate
    from agentdistill.store.models import Evaluation

    v = library.save(traj_store, _pack(), distiller="manual")

    def reply(body):  # a student that follows the rule only when the pack is in its prompt
        system = body["messages"][0]["content"]
        return "Action: look around" if "Never focus on the agent" in system else "Action: focus on agent"

    with OpenAIStub(reply=reply) as stub:
        r = ab_evaluate(traj_store, "stay-safe", {"model": "openai/student", "api_base": stub.url, "max_retries": 0},
                        {"split": "test", "tasks": [TASK], "variations": 3}, {"max_steps": 2}, progress=False)
    assert r.pairs == 3 and r.version_id == v.id
    score = r.metrics["score"]
    assert score["without"] == -100.0 and score["with"] >= 0  # focusing on the agent ends a task at -100
    assert score["diff"] == pytest.approx(score["with"] - score["without"]) and score["ci95"][0] >= 100.0
    assert r.metrics["success"]["diff"] == 0.0
    with_eps = traj_store.episodes(run_id=r.runs["with"])
    assert all(e.skill_version_id == v.id and e.sampling["skills"][0]["name"] == "stay-safe" for e in with_eps)
    assert all(e.skill_version_id is None for e in traj_store.episodes(run_id=r.runs["without"]))
    with traj_store.session() as s:
        ev = s.get(Evaluation, r.evaluation_id)
        assert ev.skill_version_id == v.id and ev.run_ids == [r.runs["without"], r.runs["with"]]


def test_progressive_disclosure_loads_a_skill_within_the_step(traj_store):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe

    library.save(traj_store, _pack(), distiller="manual")

    def reply(body):
        system = body["messages"][0]["content"]
        if "Never focus on the agent" in system:  # the body is loaded
            return "Action: look around"
        assert "- stay-safe: Avoid ending" in system  # only the catalog so far
        return "Action: load skill stay-safe"

    with OpenAIStub(reply=reply) as stub:
        run_id = run_recipe(traj_store, parse_recipe({
            "env": {"split": "test", "tasks": [TASK], "variations": 1},
            "student": {"model": "openai/student", "api_base": stub.url, "max_retries": 0, "skills": ["stay-safe"],
                        "skill_mode": "progressive"},
            "runner": {"max_steps": 2}}), progress=False)
    (ep,) = traj_store.episodes(run_id=run_id, with_steps=True)
    first, second = sorted(ep.steps, key=lambda s: s.idx)
    assert first.action == "look around" and first.info["skill_loaded"] == "stay-safe" and len(first.calls) == 2
    assert second.action == "look around" and "skill_loaded" not in second.info and len(second.calls) == 1
