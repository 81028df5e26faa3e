"""`method = "dagger"`: DAgger from black-box teachers (see dagger_config.py for the algorithm and its knobs).

Each round:
1. the current student plays `episodes_per_round` training tasks (rollout run of kind "train"); with probability
   beta_i (decaying each round) the teacher's action is executed instead of the student's;
2. at every state the student visited, the labeller (the env's expert or an LLM given the student's prompt)
   answers with its action, stored against the step in `labels` with its model call and cost;
3. the labelled states join the aggregated dataset (recorded in `datasets`, kind "dagger", one per round),
   which starts from the collected teacher episodes;
4. the student is retrained on it with TRL's SFTTrainer (from the starting checkpoint: DAgger's fresh policy);
5. the new checkpoint plays the dev tasks (selection.py).
The kept checkpoint is the best on dev among the start and every round.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdistill.agents.labelling import LabelledPolicy, Labeller
from agentdistill.agents.policies import LLMPolicy
from agentdistill.agents.runner import EnvPool, EpisodeSpec, Runner
from agentdistill.envs import Task, make
from agentdistill.envs.registry import env_class
from agentdistill.store.store import Store
from agentdistill.train.dagger_config import DAggerConfig
from agentdistill.train.data import Conversation, EpisodeFilter, episode_conversations, labelled_conversations
from agentdistill.train.model import LoraSpec, record_checkpoint
from agentdistill.train.selection import Candidate, DevSet, best

log = logging.getLogger(__name__)


@dataclass
class DAggerSetup:
    """What a DAgger run needs beyond its config: where it starts, the env and tasks, the student's prompt."""

    student: str  # the model id it starts from (the base student or an SFT checkpoint)
    policy: Callable[[str, float], LLMPolicy]  # (model id, temperature) -> the student policy with that model
    labeller: Labeller
    env: str
    train_tasks: list[Task]
    dev_tasks: list[Task]
    max_steps: int
    history: int
    env_options: dict[str, Any] = field(default_factory=dict)
    teacher_episodes: list[int] = field(default_factory=list)  # the collected teacher episodes (round 0's data)
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    learning_rate: float = 1e-3
    max_length: int = 2048
    seed: int = 0


@dataclass
class DAggerResult:
    checkpoint_id: int
    path: Path
    model: str  # the kept candidate's model id
    run_id: str
    rounds: list[dict[str, Any]]
    kept: dict[str, Any]


class DAggerTrainer:
    def __init__(self, store: Store, config: DAggerConfig, setup: DAggerSetup,
                 say: Callable[[str], None] = lambda s: None):
        from agentdistill.agents.labelling import check_labeller

        check_labeller(env_class(setup.env), setup.labeller.id)
        self.store, self.config, self.setup, self.say = store, config, setup, say

    def train(self, out: str | Path) -> DAggerResult:
        from transformers import AutoTokenizer

        from agentdistill.models.registry import release_in_process_models
        from agentdistill.train.model import base_checkpoint

        cfg, setup, store = self.config, self.setup, self.store
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(base_checkpoint(setup.student))
        teacher_convs: list[Conversation] = []
        if cfg.teacher_data and setup.teacher_episodes:
            for ep in EpisodeFilter(role="teacher", success=True, ids=setup.teacher_episodes).select(store):
                teacher_convs += episode_conversations(ep, setup.history, cfg.unit)
        run_id = store.create_run("train-dagger", {"config": cfg.model_dump(mode="json"), "student": setup.student,
                                                   "labeller": setup.labeller.id, "env": setup.env}, kind="train")
        concurrency = min(cfg.rollout_concurrency, cfg.episodes_per_round)
        pool = EnvPool(lambda: make(setup.env, **setup.env_options), max(concurrency, 1))
        dev = DevSet(setup.dev_tasks, lambda m: setup.policy(m, 0.0), setup.max_steps, pool,
                     cfg.rollout_concurrency, setup.seed)
        try:
            candidates = [Candidate("init", setup.student)]
            if setup.dev_tasks:
                dev.score(store, candidates[0], f"select-dagger-init:{run_id}")
                release_in_process_models()
                self.say(f"    start: dev success {candidates[0].dev_success:.0%}")
            order = setup.train_tasks[:]
            random.Random(setup.seed).shuffle(order)
            labelled: list[Conversation] = []
            episode_ids: list[int] = []
            rounds: list[dict[str, Any]] = []
            current = setup.student
            for i in range(cfg.rounds):
                beta = cfg.beta * cfg.beta_decay ** i
                batch = [order[(i * cfg.episodes_per_round + j) % len(order)] for j in range(cfg.episodes_per_round)]
                policy = LabelledPolicy(setup.policy(current, cfg.temperature), setup.labeller, beta, setup.seed + i)
                plan = [EpisodeSpec(i * cfg.episodes_per_round + j, "student", t, setup.seed + i)
                        for j, t in enumerate(batch)]
                runner = Runner(store, run_id, {"student": policy}, {"student": cfg.max_steps or setup.max_steps})
                asyncio.run(runner.run(plan, pool, concurrency, progress=False))
                release_in_process_models()
                by_plan = store.episodes_by_plan(run_id)
                ids = [by_plan[s.plan_index].id for s in plan]
                episodes = store.episodes(ids=ids, with_steps=True, with_calls=False)
                labels = store.labels(ids)
                new = [c for ep in episodes
                       for c in labelled_conversations(ep, {idx: lab for (e, idx), lab in labels.items() if e == ep.id},
                                                       setup.history, cfg.label)]
                labelled += new
                episode_ids += ids
                stats = self._round_stats(i, beta, episodes, labels, len(new))
                path, dataset_id, n_rows = self._retrain(i, tok, teacher_convs + labelled, episode_ids, out, current)
                current = f"local/{path}"
                candidate = Candidate(f"round-{i + 1}", current, extra={"dataset_id": dataset_id})
                if setup.dev_tasks:
                    dev.score(store, candidate, f"select-dagger-round-{i + 1}:{run_id}")
                    release_in_process_models()
                candidates.append(candidate)
                stats.update(dataset_id=dataset_id, dataset_rows=n_rows, dev_success=candidate.dev_success,
                             dev_score=candidate.dev_score, dev_run=candidate.dev_run)
                rounds.append(stats)
                self.say(f"    round {i + 1}: student success {stats['success']:.0%} on train, {stats['labels']} labels "
                         f"({stats['disagreements']} disagree), {n_rows} rows"
                         + (f", dev success {candidate.dev_success:.0%}" if candidate.dev_success is not None else ""))
            kept = best(candidates) if setup.dev_tasks else candidates[-1]
            label_cost = sum(r["label_cost"] for r in rounds)
            metrics = {"rounds": rounds, "kept": kept.as_dict(), "candidates": [c.as_dict() for c in candidates],
                       "labeller": setup.labeller.id, "label_cost": label_cost,
                       "labels": sum(r["labels"] for r in rounds)}
            kept_path = base_checkpoint(kept.model)
            ckpt = record_checkpoint(store, kept_path, setup.student, "dagger", run_id=run_id,
                                     dataset_id=kept.extra.get("dataset_id"),
                                     config=cfg.model_dump(mode="json"), metrics=metrics)
            store.set_run_status(run_id, "done")
            return DAggerResult(ckpt, kept_path, kept.model, run_id, rounds, kept.as_dict())
        except BaseException:
            store.set_run_status(run_id, "error")
            raise
        finally:
            pool.close()

    def _round_stats(self, i, beta, episodes, labels, rows) -> dict[str, Any]:
        mine = [(ep, st) for ep in episodes for st in ep.steps]
        disagree = sum(1 for ep, st in mine if (lab := labels.get((ep.id, st.idx))) is not None
                       and lab.action.strip().lower() != st.action.strip().lower())
        return {"round": i + 1, "beta": beta, "episodes": len(episodes),
                "success": sum(bool(e.success) for e in episodes) / max(1, len(episodes)),
                "steps": len(mine), "labels": sum(1 for ep, st in mine if (ep.id, st.idx) in labels),
                "disagreements": disagree, "teacher_executed": sum(1 for _, st in mine if st.info.get("teacher_executed")),
                "label_cost": sum(lab.cost for (e, _), lab in labels.items() if e in {ep.id for ep in episodes}),
                "new_rows": rows}

    def _retrain(self, i: int, tok, convs: list[Conversation], episode_ids: list[int], out: Path,
                 current: str) -> tuple[Path, int, int]:
        from agentdistill.train.data import record_dataset, save_conversations
        from agentdistill.train.sft import SFTSpec, train_sft

        cfg, setup = self.config, self.setup
        data_dir = out / f"round-{i + 1}.data"
        ds, dropped = save_conversations(tok, convs, data_dir, setup.max_length)
        dataset_id = record_dataset(self.store, f"dagger-round-{i + 1}", "dagger", data_dir,
                                    {"round": i + 1, "label": cfg.label, "labeller": setup.labeller.id,
                                     "teacher_episodes": len(setup.teacher_episodes) if cfg.teacher_data else 0,
                                     "dropped": dropped},
                                    (setup.teacher_episodes if cfg.teacher_data else []) + episode_ids, len(ds))
        spec = SFTSpec(base_model=setup.student if cfg.restart else current, lora=setup.lora, epochs=cfg.epochs,
                       learning_rate=setup.learning_rate, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       max_length=setup.max_length, seed=setup.seed + i)
        path = out / f"round-{i + 1}"
        train_sft(self.store, ds, path, spec, dataset_id=dataset_id)
        return path, dataset_id, len(ds)


def dagger_setup(store: Store, config: DAggerConfig, *, student_spec, teacher, env: str, env_options: dict[str, Any],
                 task_names: list[str] | None, split: str, variations: int | None, start: str,
                 teacher_episodes: list[int], max_steps: int, lora: LoraSpec | None, learning_rate: float,
                 max_length: int = 2048, seed: int = 0) -> DAggerSetup:
    """The DAggerSetup of a recipe stage or of `agentdistill train dagger`: the student's policy spec (its
    prompt, history, token limit) with `start` as its model, the labeller built from `teacher` (a policy spec,
    "expert" or a model id), the train tasks (`variations` of each name in `split`) and the config's dev
    tasks."""
    from agentdistill.agents.labelling import build_labeller, check_labeller
    from agentdistill.agents.rollout import build_policy, first_variations

    labeller = build_labeller(teacher, store, env)
    check_labeller(env_class(env), labeller.id)  # an open-loop expert is refused before any env starts

    def policy(model: str, temperature: float) -> LLMPolicy:
        return build_policy(student_spec.model_copy(update={"model": model, "temperature": temperature}), store, env)

    e = make(env, **env_options)
    try:
        train_tasks = first_variations(e, split, task_names, variations)
        dev_tasks = first_variations(e, "dev", task_names, config.dev_variations) if config.dev_variations else []
    finally:
        e.close()
    return DAggerSetup(student=start, policy=policy, labeller=labeller, env=env, train_tasks=train_tasks,
                       dev_tasks=dev_tasks, max_steps=max_steps, history=student_spec.history,
                       env_options=dict(env_options), teacher_episodes=teacher_episodes, lora=lora,
                       learning_rate=learning_rate, max_length=max_length, seed=seed)


def train_dagger(store: Store, config: DAggerConfig, setup: DAggerSetup, out: str | Path,
                 say: Callable[[str], None] = lambda s: None) -> DAggerResult:
    return DAggerTrainer(store, config, setup, say).train(out)
