"""`agentdistill train opd`: on-policy distillation in multi-turn environments (+ TCOD curricula, Skill-SD).

Each iteration: the student rolls out episodes in the real environment with its current weights
(stored like any run, kind "train"); a teacher scores the student's own sampled tokens; the student
is updated on agent tokens only; per-turn divergence is written into each step's info and the
iteration's success/divergence into the checkpoint's metrics.

Teachers: another local model sharing the student's tokenizer, or the student's own weights with
privileged context ("demo": a stored expert solution of the same variation; "skill": a skill text).
A self-teacher is the current student each iteration (synced by construction).

What is reused and what is ours: TRL's GKD/Distillation trainers generate single-turn completions
from prompts; they cannot step an environment between turns or replay an expert prefix, so the
rollout, the multi-turn agent-token masking and the update loop are ours. The divergences over the
vocabulary are TRL's (`GKDTrainer.generalized_jsd_loss`, see losses.py); LoRA is PEFT's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentdistill.agents.policies import LLMPolicy
from agentdistill.agents.rollout import first_variations
from agentdistill.agents.runner import EnvPool, EpisodeSpec, Runner
from agentdistill.envs import Task, make
from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.openmp import in_a_thread_of_its_own
from agentdistill.store.store import Store
from agentdistill.train.context import (SkillBandit, demo_context, expert_trajectories, load_skill_file,
                                        trajectory_skills)
from agentdistill.train.curriculum import Curriculum, PrefixReplayPolicy
from agentdistill.train.data import Conversation, episode_conversations, tokenize_conversation
from agentdistill.train.losses import divergence_per_token, skill_sd_loss
from agentdistill.train.model import Hardware, LoraSpec, load_student, record_checkpoint, save_student

log = logging.getLogger(__name__)


@dataclass
class OPDSpec:
    student: str = "local/smollm2-135m"
    teacher: str | None = None  # a local model id; None: the student's own weights + privileged context
    context: Literal["none", "demo", "skill"] = "none"  # what the teacher sees beyond the student's prompt
    skills: list[str] = field(default_factory=list)  # SKILL.md files for context "skill"; empty: from the store
    method: Literal["opd", "skill-sd"] = "opd"
    divergence: Literal["reverse_kl", "forward_kl", "jsd"] = "reverse_kl"
    jsd_beta: float = 0.5
    curriculum: Curriculum = field(default_factory=Curriculum)
    env: str = "scienceworld"
    env_options: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    tasks: list[str] | None = None
    variations: int | None = 4
    iterations: int = 8
    episodes_per_iteration: int = 2
    rollout_concurrency: int = 4  # an iteration's episodes played at once: their model calls are batched together
    # "vllm": rollouts on a vLLM engine (CUDA GPU), the current LoRA adapter saved and served each iteration;
    # "local": the training weights themselves, through the batching transformers backend
    rollout_backend: Literal["local", "vllm"] = "local"
    vllm_gpu_memory: float = 0.3  # the share of GPU memory vLLM takes; training keeps the rest
    max_steps: int = 12  # the student's step limit (the full horizon without a curriculum)
    history: int = 4
    max_tokens: int = 40
    temperature: float = 1.0
    unit: Literal["chunks", "steps"] = "chunks"
    learning_rate: float = 1e-4
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    updates_per_iteration: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 2048
    skill_sd_lambda: float = 1.0
    grpo_weight: float = 0.0  # Skill-SD: weight of the outcome-reward (GRPO-style) term
    ucb_c: float = 1.0
    seed: int = 0

    @property
    def method_name(self) -> str:
        if self.method == "skill-sd":
            return "skill-sd"
        return f"tcod-{self.curriculum.mode}" if self.curriculum.mode != "none" else "opd"

    def validate(self) -> None:
        if self.context not in ("none", "demo", "skill"):
            raise ConfigError(f"unknown teacher context {self.context!r}: use none, demo or skill")
        if self.divergence not in ("reverse_kl", "forward_kl", "jsd"):
            raise ConfigError(f"unknown divergence {self.divergence!r}: use reverse_kl, forward_kl or jsd")
        if self.method not in ("opd", "skill-sd"):
            raise ConfigError(f"unknown method {self.method!r}: use opd or skill-sd")
        if self.teacher is None and self.context == "none":
            raise ConfigError("a self-teacher (no --teacher) needs privileged context: --context demo or "
                              "--context skill, or name a teacher model with --teacher local/<model>")
        if self.method == "skill-sd" and (self.teacher is not None or self.context != "skill"):
            raise ConfigError("skill-sd distills from the student's own weights given a skill: "
                              "drop --teacher and use --context skill")
        if self.skills and self.context != "skill":
            raise ConfigError("--skill files are teacher context: add --context skill")
        if self.iterations < 1 or self.episodes_per_iteration < 1:
            raise ConfigError("iterations and episodes_per_iteration must be >= 1")
        if self.rollout_backend not in ("local", "vllm"):
            raise ConfigError(f"unknown rollout backend {self.rollout_backend!r}: use local or vllm")
        if self.rollout_backend == "vllm":
            from agentdistill.models.vllm_backend import check_vllm

            if self.lora is None:
                raise ConfigError("rollout_backend vllm serves the student's LoRA adapter each iteration: "
                                  "train with LoRA, or use rollout_backend local for full fine-tuning")
            check_vllm(self.student.removeprefix("local/"))


@dataclass
class OPDResult:
    checkpoint_id: int
    path: Path
    run_id: str
    iterations: list[dict[str, Any]]


@dataclass
class _Sample:
    episode_id: int
    task: Task
    student: Conversation
    ids: list[int]
    positions: list[int]  # token positions that carry loss
    turn_of: list[int]  # per loss position: the step idx it belongs to
    teacher_ids: list[int]
    teacher_positions: list[int]
    advantage: float = 0.0
    # filled before the update (no grad): the teacher's view, and the sampling policy's log-probs
    teacher_logits: Any = None
    teacher_logp: Any = None
    old_logp: Any = None


class OPDTrainer:
    def __init__(self, store: Store, spec: OPDSpec, hw: Hardware | None = None):
        spec.validate()
        self.store, self.spec = store, spec
        self.hw = hw or Hardware.pick()
        random.seed(spec.seed)

    # ---- setup ----------------------------------------------------------------------------------
    def _teacher_contexts(self, tasks: list[Task]) -> list[Task]:
        """Load what the teacher's context needs; returns the tasks that have it."""
        spec = self.spec
        self.expert: dict[str, list[str]] = {}
        self.left_out: list[str] = []
        if spec.context == "demo" or spec.curriculum.mode == "b2f":
            self.expert = expert_trajectories(self.store, spec.env)
            missing = [t.key for t in tasks if t.key not in self.expert]
            if len(missing) == len(tasks):
                raise AgentDistillError(
                    f"no successful teacher episode in the store for {', '.join(missing[:4])}"
                    f"{' ...' if len(missing) > 4 else ''}: collect them first, e.g. `agentdistill collect "
                    f"--policy expert --env {spec.env} --split {spec.split}`"
                )
            if missing:  # a teacher fails a few tasks: train on the ones it solved (the demo is the context)
                log.warning("%d of %d training tasks have no successful teacher episode and are left out: %s%s",
                            len(missing), len(tasks), ", ".join(missing[:4]), " ..." if len(missing) > 4 else "")
                tasks = [t for t in tasks if t.key in self.expert]
                self.left_out = missing
        self.skills: dict[str, list[str]] = {}
        if spec.context == "skill":
            names = sorted({t.name for t in tasks})
            if spec.skills:
                texts = [load_skill_file(p) for p in spec.skills]
                self.skills = {n: texts for n in names}
            else:
                self.skills = trajectory_skills(self.store, spec.env, names, spec.split)
                missing = [n for n in names if not self.skills.get(n)]
                if missing:
                    raise AgentDistillError(
                        f"no skill for task {', '.join(missing)}: pass --skill SKILL.md or collect successful "
                        f"teacher episodes of it (`agentdistill collect --policy expert --task {missing[0]}`)"
                    )
        self.bandit = SkillBandit(spec.ucb_c)
        self.last_skill: dict[str, int] = {}
        return tasks

    def _context_for(self, task: Task) -> tuple[str | None, int | None]:
        if self.spec.context == "demo":
            return demo_context(self.expert[task.key]), None
        if self.spec.context == "skill":
            options = self.skills[task.name]
            i = self.bandit.choose(task.name, len(options))
            return options[i], i
        return None, None

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, out: str | Path) -> OPDResult:
        import torch

        from agentdistill.models.local import LocalModel

        spec, store = self.spec, self.store
        torch.manual_seed(spec.seed)
        self.model, self.tok = load_student(spec.student, spec.lora, self.hw)
        self.teacher = None
        if spec.teacher:
            self.teacher, ttok = load_student(spec.teacher, None, self.hw, trainable=False)
            self.teacher.eval().requires_grad_(False)
            if ttok.get_vocab() != self.tok.get_vocab():
                raise ConfigError(f"teacher {spec.teacher} and student {spec.student} must share a tokenizer "
                                  "for token-level distillation: pick a teacher of the same family")
        env = make(spec.env, **spec.env_options)
        pool = EnvPool(lambda: make(spec.env, **spec.env_options), self._concurrency, env)
        run_id = store.create_run(f"train-{spec.method_name}", asdict(spec), kind="train")
        try:
            tasks = first_variations(env, spec.split, spec.tasks, spec.variations)
            tasks = self._teacher_contexts(tasks)
            self.student_id = f"{spec.student}@{spec.method_name}:{run_id}"
            self.updates = 0  # optimizer steps so far: the rollout model's prefix cache lives between two
            self.student = LocalModel.from_model(self.student_id, self.model, self.tok,
                                                 weights_version=lambda: self.updates)
            policy = LLMPolicy(self.student, spec.temperature, spec.max_tokens, 1, spec.history)
            params = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=spec.learning_rate)
            order = tasks[:]
            random.Random(spec.seed).shuffle(order)
            history = []
            for n in range(spec.iterations):
                batch = [order[(n * spec.episodes_per_iteration + j) % len(order)]
                         for j in range(spec.episodes_per_iteration)]
                acting = self._vllm_policy(n, Path(out)) if spec.rollout_backend == "vllm" else policy
                history.append(self._iteration(n, batch, acting, pool, run_id, optimizer, params))
                log.info("iteration %s", history[-1])
            save_student(self.model, self.tok, Path(out))
            metrics = {"iterations": history, "device": self.hw.device, "bf16": self.hw.bf16,
                       "tasks_left_out": self.left_out}  # training tasks the teacher never solved
            ckpt = record_checkpoint(store, Path(out), spec.student, spec.method_name, run_id=run_id,
                                     config=asdict(spec), metrics=metrics)
            store.set_run_status(run_id, "done")
            return OPDResult(ckpt, Path(out), run_id, history)
        except BaseException:
            store.set_run_status(run_id, "error")
            raise
        finally:
            pool.close()
            if getattr(self, "student", None) is not None:
                self.student.release()

    def _vllm_policy(self, n: int, out: Path) -> LLMPolicy:
        """This iteration's student on vLLM: the current adapter saved beside the output and served on
        the student's base checkpoint (merged once to disk when the student starts from an adapter), so
        rollouts use exactly the weights being trained, without merging them each iteration."""
        import json

        from agentdistill.models.vllm_backend import VLLMModel
        from agentdistill.train.model import base_checkpoint, is_adapter

        spec, work = self.spec, out.with_name(out.name + ".rollouts")
        base = base_checkpoint(spec.student)
        if is_adapter(spec.student):
            base = work / "base"
            if not (base / "config.json").exists():
                merged, tok = load_student(spec.student, None, Hardware("cpu", False), trainable=False,
                                           fresh_adapter=True)
                merged.save_pretrained(base)
                tok.save_pretrained(base)
                del merged
        adapter = work / f"iteration-{n}"
        self.model.save_pretrained(adapter)
        config = adapter / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(base.resolve())}))
        model = VLLMModel(f"vllm/{adapter}", gpu_memory_utilization=spec.vllm_gpu_memory)
        model.id = self.student_id  # the steps it answers are the student's: the loss masks by this id
        return LLMPolicy(model, spec.temperature, spec.max_tokens, 1, spec.history)

    @property
    def _concurrency(self) -> int:
        return max(1, min(self.spec.rollout_concurrency, self.spec.episodes_per_iteration))

    def _rollout(self, n: int, batch: list[Task], policy, pool, run_id: str) -> tuple[list, int | None]:
        spec = self.spec
        k = spec.curriculum.window(n)
        acting, max_steps = policy, spec.max_steps
        if spec.curriculum.mode == "f2b":
            max_steps = min(k, spec.max_steps)
        elif spec.curriculum.mode == "b2f":
            prefixes = {t.key: self.expert[t.key][: max(0, len(self.expert[t.key]) - k)] for t in batch}
            acting = PrefixReplayPolicy(policy, prefixes, min(k, spec.max_steps))
            max_steps = max(len(p) for p in prefixes.values()) + min(k, spec.max_steps)
        base = n * spec.episodes_per_iteration
        plan = [EpisodeSpec(base + j, "student", t, spec.seed + n) for j, t in enumerate(batch)]
        self.model.eval()
        runner = Runner(self.store, run_id, {"student": acting}, {"student": max_steps})
        asyncio.run(runner.run(plan, pool, self._concurrency, progress=False))
        by_plan = self.store.episodes_by_plan(run_id)
        ids = [by_plan[s.plan_index].id for s in plan]
        return self.store.episodes(ids=ids, with_steps=True), k

    def _samples(self, episodes) -> list[_Sample]:
        spec = self.spec
        rewards = {ep.id: (ep.score or 0.0) / 100.0 if ep.score is not None else float(bool(ep.success))
                   for ep in episodes}
        groups: dict[str, list[float]] = defaultdict(list)
        for ep in episodes:
            groups[ep.task.name].append(rewards[ep.id])
        samples = []
        for ep in episodes:
            task = Task(ep.task.env, ep.task.name, ep.task.variation, ep.task.split)
            context, skill = self._context_for(task)
            if skill is not None:
                # UCB reward: how the student does on this task after training with that skill
                if task.name in self.last_skill:
                    self.bandit.update(task.name, self.last_skill[task.name], rewards[ep.id])
                self.last_skill[task.name] = skill
            g = groups[ep.task.name]
            mean = sum(g) / len(g)
            std = (sum((r - mean) ** 2 for r in g) / len(g)) ** 0.5
            adv = (rewards[ep.id] - mean) / (std + 1e-6) if len(g) > 1 else 0.0
            learn = lambda st: st.answered_by == self.student_id  # noqa: E731
            student_convs = episode_conversations(ep, spec.history, spec.unit, learn=learn, sampled=True)
            teacher_convs = episode_conversations(ep, spec.history, spec.unit, context=context, learn=learn,
                                                  sampled=True)
            for sc, tc in zip(student_convs, teacher_convs):
                s, t = tokenize_conversation(self.tok, sc), tokenize_conversation(self.tok, tc)
                if max(len(s.input_ids), len(t.input_ids)) > spec.max_length:
                    log.warning("skipping a chat of episode %s longer than %d tokens", ep.id, spec.max_length)
                    continue
                pos = [j for j, m in enumerate(s.assistant_masks) if m and j > 0]
                tpos = [j for j, m in enumerate(t.assistant_masks) if m and j > 0]
                if [s.input_ids[j] for j in pos] != [t.input_ids[j] for j in tpos]:
                    raise AgentDistillError("student and teacher views tokenize the agent turns differently: "
                                            "teacher context must not change the chat's turn structure")
                samples.append(_Sample(ep.id, task, sc, s.input_ids, pos, [sc.step_idx[s.turn_ids[j]] for j in pos],
                                       t.input_ids, tpos, adv))
        return samples

    def _logits_at(self, model, ids: list[int], positions: list[int]):
        import torch

        x = torch.tensor([ids], device=self.hw.device)
        # mixed precision where the hardware computes bf16 natively (fp32 master weights, as TRL's bf16 does)
        with torch.autocast(self.hw.device, dtype=torch.bfloat16, enabled=self.hw.bf16):
            logits = model(input_ids=x).logits[0]
        # the token at position j is predicted by the logits at j - 1
        return logits[torch.tensor(positions, device=self.hw.device) - 1].float()

    def _iteration(self, n, batch, policy, pool, run_id, optimizer, params) -> dict[str, Any]:
        import torch

        spec = self.spec
        t0 = time.perf_counter()
        episodes, k = self._rollout(n, batch, policy, pool, run_id)
        t_roll = time.perf_counter() - t0
        self.student.release()  # the rollouts' kept prompts: stale after this iteration's updates, and memory
        samples = self._samples(episodes)
        student_turns = [sum(1 for st in ep.steps if st.answered_by == self.student_id) for ep in episodes]
        stats: dict[str, Any] = {
            "iteration": n, "k": k, "episodes": len(episodes),
            "success": sum(bool(ep.success) for ep in episodes) / len(episodes),
            "score": sum(ep.score or 0 for ep in episodes) / len(episodes),
            "student_turns": sum(student_turns) / len(episodes), "rollout_s": t_roll,
        }
        n_tokens = sum(len(s.positions) for s in samples)
        if not n_tokens:
            stats.update(tokens=0, divergence=None, loss=None)
            return stats
        teacher = self.teacher or self.model  # a self-teacher is the current student: synced every iteration
        teacher.eval()
        self.model.eval()
        with torch.no_grad():
            for s in samples:
                tl = self._logits_at(teacher, s.teacher_ids, s.teacher_positions)
                tokens = torch.tensor([s.ids[j] for j in s.positions], device=self.hw.device)
                if spec.method == "opd":
                    s.teacher_logits = tl
                else:
                    s.teacher_logp = torch.log_softmax(tl, -1).gather(-1, tokens[:, None])[:, 0]
                    sl = self._logits_at(self.model, s.ids, s.positions)
                    s.old_logp = torch.log_softmax(sl, -1).gather(-1, tokens[:, None])[:, 0]
        self.model.train()
        t1 = time.perf_counter()
        per_turn: dict[tuple[int, int], list[float]] = defaultdict(list)
        losses = []
        for u in range(spec.updates_per_iteration):
            optimizer.zero_grad()
            total = 0.0
            for s in samples:
                logits = self._logits_at(self.model, s.ids, s.positions)
                if spec.method == "opd":
                    per_token = divergence_per_token(logits, s.teacher_logits, spec.divergence, spec.jsd_beta)
                    loss = per_token.sum() / n_tokens
                    values = per_token.detach()
                else:
                    tokens = torch.tensor([s.ids[j] for j in s.positions], device=self.hw.device)
                    logp = torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]
                    adv = torch.full_like(logp, s.advantage)
                    mean_loss, values = skill_sd_loss(logp, s.teacher_logp, s.old_logp, adv,
                                                      spec.skill_sd_lambda, spec.grpo_weight)
                    loss = mean_loss * len(s.positions) / n_tokens
                loss.backward()
                total += loss.item()
                if u == 0:  # the divergence the rollout policy had, before this iteration's update
                    for step_idx, v in zip(s.turn_of, values.tolist()):
                        per_turn[(s.episode_id, step_idx)].append(v)
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            optimizer.step()
            self.updates += 1
            losses.append(total)
        t_update = time.perf_counter() - t1
        notes: dict[int, dict[int, dict]] = defaultdict(dict)
        for (ep_id, idx), vals in per_turn.items():
            notes[ep_id][idx] = {"distill": {"iteration": n, "method": spec.method_name, "measure":
                                             spec.divergence if spec.method == "opd" else "k3",
                                             "per_token": sum(vals) / len(vals), "tokens": len(vals)}}
        for ep_id, by_idx in notes.items():
            self.store.annotate_steps(ep_id, by_idx)
        all_vals = [v for vals in per_turn.values() for v in vals]
        seq_tokens = sum(len(s.ids) for s in samples) * spec.updates_per_iteration
        stats.update(tokens=n_tokens, divergence=sum(all_vals) / len(all_vals), loss=losses[0],
                     loss_last=losses[-1], update_s=t_update, tokens_per_s=seq_tokens / t_update if t_update else None)
        return stats


@in_a_thread_of_its_own  # its OpenMP pool must not slow later generation (openmp.py)
def train_opd(store: Store, spec: OPDSpec, out: str | Path, hw: Hardware | None = None) -> OPDResult:
    return OPDTrainer(store, spec, hw).train(out)
