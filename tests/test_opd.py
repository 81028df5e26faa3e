"""A sound OPD on real TextWorld with real SmolLM2: the loss is computed on exactly the tokens the rollout
produced, the self-teacher is frozen at the start, and the kept checkpoint is chosen on dev."""

from __future__ import annotations

import pytest

pytest.importorskip("textworld", reason="pip install textworld")


@pytest.fixture(scope="module")
def tw_store(tmp_path_factory):
    """Expert episodes on two training games (the demos a self-teacher reads)."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path_factory.mktemp("opd") / "s.db"))
    run_recipe(store, parse_recipe({"env": {"name": "textworld", "split": "train", "tasks": ["easy"], "variations": 2},
                                    "teacher": {"policy": "expert"}, "runner": {"max_steps": 6}}), progress=False)
    return store


def _spec(**over):
    from agentdistill.train.opd import OPDSpec

    return OPDSpec(**{"env": "textworld", "tasks": ["easy"], "variations": 2, "iterations": 1,
                      "episodes_per_iteration": 2, "max_steps": 3, "history": 2, "max_tokens": 24, "context": "demo",
                      "teacher_check_states": 0, **over})


@pytest.mark.slow
def test_opd_scores_exactly_the_tokens_the_rollout_produced(tw_store, tmp_path, monkeypatch):
    """Each trained turn's context is token for token the prompt the engine prefilled at that step, and its
    targets are the tokens it sampled (with the end of turn only where one was sampled)."""
    from agentdistill.models.engine import Engine
    from agentdistill.train.opd import OPDTrainer, train_opd

    jobs: dict[tuple[int, ...], list] = {}
    completions = Engine._completions

    def spy(self, job):
        jobs[tuple(job.prompt)] = [(list(s.out), s.finish) for s in job.sequences]
        return completions(self, job)

    monkeypatch.setattr(Engine, "_completions", spy)
    scored = []
    samples = OPDTrainer._samples

    def keep(self, episodes):
        out = samples(self, episodes)
        scored.append((self.tok, out))
        return out

    monkeypatch.setattr(OPDTrainer, "_samples", keep)
    train_opd(tw_store, _spec(), tmp_path / "ckpt")
    ((tok, turns),) = scored
    assert turns and jobs
    exact_targets = 0
    for s in turns:
        start = s.positions[0]
        assert s.positions == list(range(start, len(s.ids)))  # the sampled reply, and only it, carries loss
        prompt = tuple(s.ids[:start])
        assert prompt in jobs, "the training context differs from every prompt the rollout sent"
        ((out, finish),) = jobs[prompt]
        target = s.ids[start:]
        if finish == "length":
            assert target == out  # no end-of-turn target after a cut reply
        elif "\nObservation" not in tok.decode(out):  # stopped by the end-of-turn token
            assert target == out + [tok.eos_token_id]
        exact_targets += 1
        # the teacher sees the same reply after its own (privileged) prompt
        assert s.teacher_ids[s.teacher_positions[0]:] == target
        assert len(s.teacher_ids) > len(s.ids)
    assert exact_targets == len(turns)


@pytest.mark.slow
def test_a_frozen_self_teacher_does_not_move_and_the_teacher_is_checked(tw_store, tmp_path, caplog):
    """The self-teacher is the starting weights, frozen: after updates it still gives the starting logits. The
    teacher check runs on stored expert states and is recorded with the checkpoint."""
    import logging

    import torch

    from agentdistill.store.models import Checkpoint
    from agentdistill.train.opd import OPDTrainer

    trainer = OPDTrainer(tw_store, _spec(iterations=2, teacher_check_states=4, learning_rate=1e-3))
    caplog.set_level(logging.INFO, logger="agentdistill.train.opd")
    result = trainer.train(tmp_path / "ckpt")
    assert trainer.teacher is trainer.start and trainer.teacher is not trainer.model
    ids = torch.tensor([trainer.tok("Action: go east")["input_ids"]])
    with torch.no_grad():
        moved = (trainer.model(input_ids=ids).logits - trainer.teacher(input_ids=ids).logits).abs().max().item()
    assert moved > 0  # the student learnt; the teacher did not follow it
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    with tw_store.session() as s:
        metrics = s.get(Checkpoint, result.checkpoint_id).metrics
    check = metrics["teacher_check"]
    assert check["states"] == 4 and 0 <= check["student_agreement"] <= 1 and 0 <= check["teacher_agreement"] <= 1
    assert metrics["temperature"] == 0.7
    assert any("teacher check" in r.getMessage() for r in caplog.records)
