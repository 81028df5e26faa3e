"""Trainer: real TRL/PEFT steps on CPU with SmolLM2, real ScienceWorld rollouts, real stored episodes."""

from __future__ import annotations

import math

import pytest
import torch

from agentdistill.errors import ConfigError
from agentdistill.train.curriculum import Curriculum
from agentdistill.train.losses import divergence_per_token, skill_sd_loss

from .conftest import run_cli

TASK = "power-component"


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    """Expert episodes on two train variations of one task family, in a store of this module's own."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path_factory.mktemp("train") / "s.db"))
    recipe = parse_recipe({"env": {"split": "train", "tasks": [TASK], "variations": 2},
                           "teacher": {"policy": "expert"}, "runner": {"max_steps": 40}})
    run_recipe(store, recipe, progress=False)
    return store


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from agentdistill.train.model import base_checkpoint

    return AutoTokenizer.from_pretrained(base_checkpoint("local/smollm2-135m"))


# ---- datasets -------------------------------------------------------------------------------------
def test_loss_tokens_decode_to_exactly_the_agent_turns(train_store, tokenizer):
    from agentdistill.train.data import EpisodeFilter, episode_conversations, tokenize_conversation

    ep = EpisodeFilter(role="teacher", tasks=[TASK]).select(train_store)[0]
    convs = episode_conversations(ep, window=2)
    assert sum(c.train.count(True) for c in convs) == len(ep.steps)  # every turn trained exactly once
    assert [i for c in convs for i in c.step_idx] == [s.idx for s in ep.steps]
    for conv in convs:
        tok = tokenize_conversation(tokenizer, conv)
        # same tokens the chat template produces, so the mask lines up with what the model sees
        assert tok.input_ids == tokenizer.apply_chat_template(conv.messages, tokenize=True, return_dict=True)["input_ids"]
        agent = [m["content"] for m in conv.messages if m["role"] == "assistant"]
        for turn, content in enumerate(agent):
            ids = [t for t, m, k in zip(tok.input_ids, tok.assistant_masks, tok.turn_ids) if m and k == turn]
            assert tokenizer.decode(ids) == content + "<|im_end|>"
        masked = sum(tok.assistant_masks)
        assert masked == sum(len(tokenizer(c + "<|im_end|>", add_special_tokens=False)["input_ids"]) for c in agent)


def test_training_chats_match_rollout_prompts(train_store, tokenizer):
    """The chat ending on a turn is exactly the policy's prompt at that step plus the agent's message."""
    from agentdistill.agents.policies import Turn, render_messages, system_message
    from agentdistill.envs.registry import env_class
    from agentdistill.train.data import EpisodeFilter, episode_conversations

    ep = EpisodeFilter(role="teacher", tasks=[TASK]).select(train_store)[0]
    steps = sorted(ep.steps, key=lambda s: s.idx)
    window = 2
    system = system_message(env_class("scienceworld"))
    for conv in episode_conversations(ep, window=window, unit="steps"):
        t = conv.step_idx[-1]
        history = [Turn(s.observation, s.action, s.thought) for s in steps[:t]]
        prompt = render_messages(system, ep.task.goal, history, steps[t].observation, window)
        assert conv.messages[:-1] == prompt
        assert conv.messages[-1] == {"role": "assistant", "content": f"Action: {steps[t].action}"}
        assert conv.train == [False] * (len(conv.train) - 1) + [True]


def test_dataset_is_recorded_and_bad_filters_fail_clearly(train_store, tokenizer, tmp_path):
    from agentdistill.errors import AgentDistillError
    from agentdistill.store.models import Dataset
    from agentdistill.train.data import EpisodeFilter, build_sft_dataset, load_dataset_ref

    dataset_id, ds = build_sft_dataset(train_store, tokenizer, tmp_path / "ds", EpisodeFilter(tasks=[TASK]), window=2)
    with train_store.session() as s:
        row = s.get(Dataset, dataset_id)
        assert row.kind == "sft" and row.n_rows == len(ds) and len(row.episode_ids) == 2
    again_id, again = load_dataset_ref(train_store, str(dataset_id))
    assert again_id == dataset_id and again["input_ids"] == ds["input_ids"]
    with pytest.raises(AgentDistillError, match="no finished episodes match"):
        build_sft_dataset(train_store, tokenizer, tmp_path / "none", EpisodeFilter(tasks=["boil"]))
    assert not (tmp_path / "none").exists()


# ---- SFT ------------------------------------------------------------------------------------------
def test_sft_loss_falls_and_the_lora_checkpoint_acts_in_scienceworld(train_store, tokenizer, tmp_path):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.models import Checkpoint
    from agentdistill.train.data import EpisodeFilter, build_sft_dataset
    from agentdistill.train.model import Hardware, LoraSpec
    from agentdistill.train.sft import SFTSpec, train_sft

    dataset_id, ds = build_sft_dataset(train_store, tokenizer, tmp_path / "ds", EpisodeFilter(tasks=[TASK]), window=1)
    fixed = ds.select(range(2))  # one fixed batch, seen every step
    spec = SFTSpec(lora=LoraSpec(r=8, alpha=16, dropout=0.0), max_steps=6, learning_rate=2e-3, batch_size=2)
    result = train_sft(train_store, fixed, tmp_path / "ckpt", spec, Hardware.pick("cpu"), dataset_id)
    m = result.metrics
    assert m["steps"] == 6 and m["last_loss"] < 0.5 * m["first_loss"], m
    assert (tmp_path / "ckpt" / "adapter_config.json").exists()
    with train_store.session() as s:
        ck = s.get(Checkpoint, result.checkpoint_id)
        assert ck.method == "sft" and ck.dataset_id == dataset_id and ck.metrics["tokens"] > 0

    recipe = parse_recipe({"env": {"split": "test", "tasks": [TASK], "variations": 1},
                           "student": {"model": f"local/{tmp_path / 'ckpt'}", "max_tokens": 24, "history": 1},
                           "runner": {"max_steps": 2}})
    run_id = run_recipe(train_store, recipe, progress=False)
    (ep,) = train_store.episodes(run_id=run_id, with_steps=True)
    assert ep.status == "done" and ep.n_steps == 2, ep.error
    assert all(st.calls and st.calls[0].model == f"local/{tmp_path / 'ckpt'}" for st in ep.steps)


# ---- TCOD -----------------------------------------------------------------------------------------
def test_tcod_windows_follow_the_schedule():
    f2b = Curriculum("f2b", k_start=1, eta=3)  # TCOD f2b: 1 + floor(step / checkpoint_steps)
    assert [f2b.window(n) for n in (0, 1, 2, 3, 5, 6, 30)] == [1 + n // 3 for n in (0, 1, 2, 3, 5, 6, 30)]
    b2f = Curriculum("b2f", k_start=2, eta=2, k_max=5)  # min(k_start + floor(n / eta), k_max)
    assert [b2f.window(n) for n in range(10)] == [min(2 + n // 2, 5) for n in range(10)]
    assert Curriculum().window(7) is None  # vanilla OPD: the full horizon
    for bad in ({"mode": "x"}, {"mode": "f2b", "eta": 0}, {"mode": "b2f", "k_start": 3, "k_max": 2}):
        with pytest.raises(ConfigError):
            Curriculum(**bad)


# ---- losses ---------------------------------------------------------------------------------------
def test_skill_sd_loss_equals_direct_computation_and_vanishes_when_teacher_is_student():
    g = torch.Generator().manual_seed(0)
    logp_s = torch.log(torch.rand(7, generator=g)).requires_grad_()
    logp_t = torch.log(torch.rand(7, generator=g))
    logp_old = logp_s.detach() + 0.1 * torch.randn(7, generator=g)
    adv = torch.randn(7, generator=g)
    loss, k3 = skill_sd_loss(logp_s, logp_t, logp_old, adv, lam=0.7, grpo_weight=0.3)
    direct = 0.0
    for i in range(7):
        l_t = logp_s[i].item() - logp_t[i].item()
        rho = math.exp(logp_s[i].item() - logp_old[i].item())
        direct += 0.7 * rho * (math.exp(-l_t) - 1 + l_t) / 7 - 0.3 * rho * adv[i].item() / 7
    assert loss.item() == pytest.approx(direct, rel=1e-5)
    loss.backward()
    assert logp_s.grad is not None and logp_s.grad.abs().sum() > 0

    same, k3_same = skill_sd_loss(logp_s, logp_s.detach(), logp_s.detach(), lam=1.0)
    assert same.item() == 0.0 and torch.all(k3_same == 0)


def test_divergences_equal_their_definitions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    ps, pt = s.softmax(-1), t.softmax(-1)
    reverse = (ps * (ps.log() - pt.log())).sum(-1)  # KL(student || teacher): on-policy distillation's loss
    forward = (pt * (pt.log() - ps.log())).sum(-1)
    assert torch.allclose(divergence_per_token(s, t, "reverse_kl"), reverse, atol=1e-5)
    assert torch.allclose(divergence_per_token(s, t, "forward_kl"), forward, atol=1e-5)
    m = 0.5 * ps + 0.5 * pt
    jsd = 0.5 * (pt * (pt.log() - m.log())).sum(-1) + 0.5 * (ps * (ps.log() - m.log())).sum(-1)
    assert torch.allclose(divergence_per_token(s, t, "jsd", 0.5), jsd, atol=1e-5)
    assert torch.allclose(divergence_per_token(s, s, "reverse_kl"), torch.zeros(5), atol=1e-6)


def test_ucb_tries_every_skill_then_prefers_the_better_one():
    from agentdistill.train.context import SkillBandit

    bandit = SkillBandit(c=0.1)
    seen = []
    for _ in range(3):
        i = bandit.choose("t", 3)
        seen.append(i)
        bandit.update("t", i, 1.0 if i == 2 else 0.0)
    assert sorted(seen) == [0, 1, 2]
    assert bandit.choose("t", 3) == 2


# ---- on-policy distillation -----------------------------------------------------------------------
@pytest.mark.slow
def test_opd_b2f_replays_the_expert_prefix_and_logs_per_turn_kl(train_store, tmp_path):
    from agentdistill.store.models import Checkpoint, Run
    from agentdistill.train.model import Hardware
    from agentdistill.train.opd import OPDSpec, train_opd

    spec = OPDSpec(context="demo", tasks=[TASK], variations=1, iterations=2, episodes_per_iteration=1, max_steps=3,
                   max_tokens=24, history=2, curriculum=Curriculum("b2f", k_start=1, eta=1, k_max=2),
                   teacher_check_states=0)  # the check has its own test (test_opd.py)
    result = train_opd(train_store, spec, tmp_path / "opd", Hardware.pick("cpu"))
    assert [it["k"] for it in result.iterations] == [1, 2]
    eps = train_store.episodes(run_id=result.run_id, with_steps=True)
    expert = next(e for e in train_store.episodes(role="teacher", with_steps=True) if e.task.variation == eps[0].task.variation)
    for ep, k in zip(eps, [1, 2]):
        steps = sorted(ep.steps, key=lambda s: s.idx)
        n_prefix = len(expert.steps) - k
        assert [s.action for s in steps[:n_prefix]] == [s.action for s in sorted(expert.steps, key=lambda s: s.idx)][:n_prefix]
        assert all(s.answered_by == "replay" and "distill" not in s.info for s in steps[:n_prefix])
        student = steps[n_prefix:]
        assert 1 <= len(student) <= k
        for s in student:
            d = s.info["distill"]
            assert d["method"] == "tcod-b2f" and d["measure"] == "reverse_kl" and d["per_token"] >= 0 and d["tokens"] > 0
    with train_store.session() as s:
        assert s.get(Run, result.run_id).kind == "train"
        ck = s.get(Checkpoint, result.checkpoint_id)
        assert ck.method == "tcod-b2f" and len(ck.metrics["iterations"]) == 2
    assert (tmp_path / "opd" / "adapter_config.json").exists()


@pytest.mark.slow
def test_opd_f2b_limits_student_turns_and_skill_sd_trains(train_store, tmp_path):
    from agentdistill.train.model import Hardware
    from agentdistill.train.opd import OPDSpec, train_opd

    f2b = OPDSpec(context="demo", tasks=[TASK], variations=1, iterations=2, episodes_per_iteration=1, max_steps=4,
                  max_tokens=24, history=2, curriculum=Curriculum("f2b", k_start=1, eta=1),
                  teacher_check_states=0)  # the check has its own test (test_opd.py)
    result = train_opd(train_store, f2b, tmp_path / "f2b", Hardware.pick("cpu"))
    for ep, k in zip(train_store.episodes(run_id=result.run_id), [1, 2]):
        assert ep.n_steps <= k

    # a separate frozen teacher (the f2b checkpoint: same tokenizer), no privileged context
    teacher = OPDSpec(teacher=f"local/{tmp_path / 'f2b'}", tasks=[TASK], variations=1, iterations=1,
                      episodes_per_iteration=1, max_steps=2, max_tokens=24, history=1, divergence="jsd",
                      teacher_check_states=0)
    result = train_opd(train_store, teacher, tmp_path / "t", Hardware.pick("cpu"))
    assert result.iterations[0]["tokens"] > 0 and result.iterations[0]["divergence"] > 0

    sd = OPDSpec(method="skill-sd", context="skill", tasks=[TASK], variations=1, iterations=1,
                 episodes_per_iteration=2, max_steps=2, max_tokens=24, history=1, grpo_weight=0.5,
                 teacher_check_states=0)
    result = train_opd(train_store, sd, tmp_path / "sd", Hardware.pick("cpu"))
    it = result.iterations[0]
    assert it["tokens"] > 0 and it["divergence"] >= 0 and math.isfinite(it["loss"])


def test_opd_leaves_out_tasks_the_teacher_never_solved(train_store, caplog):
    """A teacher that failed a few training tasks (MiniWoB's scripted expert fails ~4%) costs those tasks
    their place in the curriculum, not the whole OPD stage; with none solved, one line says what to do."""
    from agentdistill.envs import Task
    from agentdistill.errors import AgentDistillError
    from agentdistill.train.opd import OPDSpec, OPDTrainer

    solved = next(e.task for e in train_store.episodes(role="teacher") if e.success)
    known = Task(solved.env, solved.name, solved.variation, solved.split)
    unsolved = Task(known.env, known.name, 9999, known.split)
    trainer = OPDTrainer(train_store, OPDSpec(context="demo", tasks=[TASK], variations=1))
    with caplog.at_level("WARNING"):
        assert trainer._teacher_contexts([known, unsolved]) == [known]
    assert "1 of 2 training tasks have no successful teacher episode" in caplog.text
    assert trainer.left_out == [unsolved.key]  # recorded in the checkpoint's metrics
    with pytest.raises(AgentDistillError, match="no successful teacher episode in the store for"):
        trainer._teacher_contexts([unsolved])


def test_opd_options_fail_with_one_line(tmp_path):
    cases = [
        ([], "needs privileged context"),
        (["--method", "skill-sd", "--context", "demo"], "skill-sd distills"),
        (["--context", "demo", "--curriculum", "sideways"], "unknown curriculum"),
        (["--context", "demo", "--device", "cuda"] if not torch.cuda.is_available() else ["--context", "zz"], "")
    ]
    for args, msg in cases:
        r = run_cli("train", "opd", str(tmp_path / "x"), "--db", str(tmp_path / "s.db"), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
    assert not (tmp_path / "s.db").exists()
