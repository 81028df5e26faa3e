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
from agentdistill.train.losses import divergence_per_token, skill_sd_loss
from agentdistill.train.model import (Hardware, LoraSpec, base_checkpoint, load_student, record_checkpoint,
                                      save_student)
from agentdistill.train.selection import Candidate, DevSet, best

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
    # rollout sampling: below 1 the student visits states near those greedy evaluation visits, where reverse KL's
    # mode seeking does no harm; recorded with every iteration
    temperature: float = 0.7
    # a self-teacher (no `teacher`) is the starting weights, frozen ("frozen": a fixed anchor), or the current
    # student each iteration ("live": the teacher moves with the student)
    self_teacher: Literal["frozen", "live"] = "frozen"
    anchor_kl: float = 0.1  # + this x KL(student || starting policy) on the student's own prompt
    learning_rate: float = 1e-4
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    updates_per_iteration: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 2048
    skill_sd_lambda: float = 1.0
    grpo_weight: float = 0.0  # Skill-SD: weight of the outcome-reward (GRPO-style) term
    ucb_c: float = 1.0
    teacher_check_states: int = 24  # stored expert states the teacher is checked on before training (0: none)
    dev_variations: int = 0  # dev tasks per task name that pick the kept iteration (selection.py); 0: keep the last
    select_every: int = 2  # iterations between two dev evaluations (the last iteration is always one)
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
        if self.self_teacher not in ("frozen", "live"):
            raise ConfigError(f"unknown self_teacher {self.self_teacher!r}: use frozen or live")
        if self.anchor_kl < 0 or self.dev_variations < 0 or self.select_every < 1:
            raise ConfigError("anchor_kl and dev_variations must be >= 0, select_every >= 1")
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
    path: Path  # the kept checkpoint (the best on dev among the start and the evaluated iterations)
    run_id: str
    iterations: list[dict[str, Any]]
    kept: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sample:
    episode_id: int
    task: Task
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
    start_logits: Any = None  # the starting policy's, on the student's prompt (the anchor)


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
        self.expert: dict[Task, list[str]] = {}
        self.left_out: list[str] = []
        if spec.context == "demo" or spec.curriculum.mode == "b2f":
            self.expert = expert_trajectories(self.store, spec.env)
            missing = [t.key for t in tasks if t not in self.expert]
            if len(missing) == len(tasks):
                raise AgentDistillError(
                    f"no successful teacher episode in the store for {', '.join(missing[:4])}"
                    f"{' ...' if len(missing) > 4 else ''}: collect them first, e.g. `agentdistill collect "
                    f"--policy expert --env {spec.env} --split {spec.split}`"
                )
            if missing:  # a teacher fails a few tasks: train on the ones it solved (the demo is the context)
                log.warning("%d of %d training tasks have no successful teacher episode and are left out: %s%s",
                            len(missing), len(tasks), ", ".join(missing[:4]), " ..." if len(missing) > 4 else "")
                tasks = [t for t in tasks if t in self.expert]
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
            return demo_context(self.expert[task]), None
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
        # the starting policy, frozen: the anchor, and the self-teacher unless it is "live"
        self.start = None
        if spec.anchor_kl > 0 or (spec.teacher is None and spec.self_teacher == "frozen"):
            self.start, _ = load_student(spec.student, None, self.hw, trainable=False)
            self.start.eval().requires_grad_(False)
        self.teacher = self.start if spec.teacher is None and spec.self_teacher == "frozen" else None
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
            check = self._check_teacher(tasks)
            params = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=spec.learning_rate)
            order = tasks[:]
            random.Random(spec.seed).shuffle(order)
            dev = self._dev_set(env, pool)
            candidates = [Candidate("init", spec.student)]
            if dev:
                self._score(dev, candidates[0], run_id)
            history = []
            for n in range(spec.iterations):
                batch = [order[(n * spec.episodes_per_iteration + j) % len(order)]
                         for j in range(spec.episodes_per_iteration)]
                acting = self._vllm_policy(n, Path(out)) if spec.rollout_backend == "vllm" else policy
                history.append(self._iteration(n, batch, acting, pool, run_id, optimizer, params))
                last = n == spec.iterations - 1
                if dev and ((n + 1) % spec.select_every == 0 or last):
                    path = save_student(self.model, self.tok, Path(str(out) + ".iterations") / f"iteration-{n + 1}")
                    history[-1].update(self._score(dev, Candidate(f"iteration-{n + 1}", f"local/{path}"), run_id,
                                                   candidates).as_dict())
                log.info("iteration %s", history[-1])
            kept_path = Path(out)
            if dev:
                kept = best(candidates)
                kept_path = base_checkpoint(kept.model)
            else:  # no dev tasks: the last weights
                kept = Candidate(f"iteration-{spec.iterations}", f"local/{out}")
                save_student(self.model, self.tok, Path(out))
            metrics = {"iterations": history, "device": self.hw.device, "bf16": self.hw.bf16,
                       "temperature": spec.temperature, "teacher_check": check.as_dict() if check else None, "kept": kept.as_dict(),
                       "candidates": [c.as_dict() for c in candidates],
                       "tasks_left_out": self.left_out}  # training tasks the teacher never solved
            ckpt = record_checkpoint(store, kept_path, spec.student, spec.method_name, run_id=run_id,
                                     config=asdict(spec), metrics=metrics)
            store.set_run_status(run_id, "done")
            return OPDResult(ckpt, kept_path, run_id, history, kept.as_dict())
        except BaseException:
            store.set_run_status(run_id, "error")
            raise
        finally:
            pool.close()
            if getattr(self, "student", None) is not None:
                self.student.release()

    def _check_teacher(self, tasks: list[Task]):
        """The teacher's and the starting student's agreement with the expert on stored states; warns when the
        teacher is not the better of the two (see teacher_check.py)."""
        from agentdistill.models.local import LocalModel
        from agentdistill.train.data import EpisodeFilter
        from agentdistill.train.teacher_check import check_teacher

        spec = self.spec
        if not spec.teacher_check_states:
            return None
        wanted = set(tasks)
        episodes = [ep for ep in EpisodeFilter(role="teacher", success=True, env=spec.env, split=spec.split)
                    .select(self.store) if Task(ep.task.env, ep.task.name, ep.task.variation, ep.task.split) in wanted]
        if not episodes:
            log.info("no stored expert episode of the training tasks: the teacher is not checked")
            return None
        teacher = self.student
        if self.teacher is not None and self.teacher is not self.model:
            teacher = LocalModel.from_model(f"{spec.teacher or spec.student}@teacher", self.teacher, self.tok)

        def view(task: Task, msgs):
            return with_context(msgs, self._teacher_context(task))

        try:
            check = check_teacher(episodes, self.student, teacher, view, spec.history, spec.max_tokens,
                                  spec.teacher_check_states)
        finally:
            if teacher is not self.student:
                teacher.release()
        if check is not None:
            log.info("teacher check: %s", check.as_dict())
            if not check.teacher_better:
                log.warning("the teacher agrees with the expert on %.0f%% of %d stored states and the student on "
                            "%.0f%%: it is not the better of the two, so distilling from it is unlikely to help "
                            "(give a stronger --teacher, or another --context)", 100 * check.teacher_agreement,
                            check.states, 100 * check.student_agreement)
        return check

    def _teacher_context(self, task: Task) -> str | None:
        if self.spec.context == "demo":
            return demo_context(self.expert[task]) if task in self.expert else None
        if self.spec.context == "skill":
            options = self.skills.get(task.name) or [None]
            return options[0]
        return None

    def _dev_set(self, env, pool) -> DevSet | None:
        spec = self.spec
        if not spec.dev_variations:
            return None
        from agentdistill.models import make_model

        tasks = first_variations(env, "dev", spec.tasks, spec.dev_variations)
        return DevSet(tasks, lambda m: LLMPolicy(make_model(m), 0.0, spec.max_tokens, 1, spec.history),
                      spec.max_steps, pool, spec.rollout_concurrency, spec.seed)

    def _score(self, dev: DevSet, candidate: Candidate, run_id: str, into: list[Candidate] | None = None) -> Candidate:
        from agentdistill.models.registry import release_in_process_models

        dev.score(self.store, candidate, f"select-{self.spec.method_name}-{candidate.name}:{run_id}")
        release_in_process_models()
        if into is not None:
            into.append(candidate)
        log.info("%s: dev success %.2f", candidate.name, candidate.dev_success)
        return candidate

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
            prefixes = {t: self.expert[t][: max(0, len(self.expert[t]) - k)] for t in batch}
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
            for st in sorted(ep.steps, key=lambda st: st.idx):
                if st.answered_by != self.student_id or not st.calls:  # replayed or teacher turns carry no loss
                    continue
                sample = self._sample(ep, task, st, context, adv)
                if sample is not None:
                    samples.append(sample)
        return samples

    def _sample(self, ep, task: Task, st, context: str | None, adv: float) -> _Sample | None:
        """One student turn as the rollout produced it: the prompt its model call sent (tokenized as the
        model tokenized it) and the text it sampled. The teacher sees the same chat with its context appended
        to the system message. A reply cut at max_tokens has no end-of-turn target: it was never sampled."""
        from agentdistill.models.base import chat_prompt_ids

        messages = st.calls[-1].messages  # the call that produced the action (after any skill load)
        prompt = chat_prompt_ids(self.tok, messages)
        teacher_prompt = chat_prompt_ids(self.tok, with_context(messages, context))
        sampled = self.tok(st.raw_output or "", add_special_tokens=False)["input_ids"]
        if (st.info or {}).get("finish") != "length":
            sampled = sampled + [self.tok.eos_token_id]
        if not sampled:
            return None
        if max(len(prompt), len(teacher_prompt)) + len(sampled) > self.spec.max_length:
            log.warning("skipping a turn of episode %s longer than %d tokens", ep.id, self.spec.max_length)
            return None
        pos = list(range(len(prompt), len(prompt) + len(sampled)))
        tpos = list(range(len(teacher_prompt), len(teacher_prompt) + len(sampled)))
        return _Sample(ep.id, task, prompt + sampled, pos, [st.idx] * len(sampled), teacher_prompt + sampled, tpos,
                       adv)

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
        teacher = self.teacher or self.model  # self_teacher "live": the current student, synced every iteration
        teacher.eval()
        self.model.eval()
        with torch.no_grad():
            for s in samples:
                if spec.anchor_kl > 0:
                    s.start_logits = self._logits_at(self.start, s.ids, s.positions)
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
                if spec.anchor_kl > 0:  # stay near the starting policy where the teacher pulls away from it
                    loss = loss + spec.anchor_kl * divergence_per_token(logits, s.start_logits, "reverse_kl").sum() / n_tokens
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


def with_context(messages: list[dict], context: str | None) -> list[dict]:
    """The chat a privileged teacher sees: the student's, with `context` appended to the system message (as
    policies.system_message appends a context)."""
    if not context:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{context}"}, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


@in_a_thread_of_its_own  # its OpenMP pool must not slow later generation (openmp.py)
def train_opd(store: Store, spec: OPDSpec, out: str | Path, hw: Hardware | None = None) -> OPDResult:
    return OPDTrainer(store, spec, hw).train(out)
