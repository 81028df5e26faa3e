"""SODA: semi on-policy distillation with alignment (Chen et al., arXiv 2604.03873), for black-box teachers.

An API teacher gives text, not log-probs, so token-level on-policy distillation cannot score the
student against it. SODA instead contrasts, at the same state, the teacher's answer (chosen) with a
one-time static snapshot of the student's own answer (rejected), and aligns the student with a
preference loss (DPO): it imitates the teacher and prunes its own typical mistakes, without the
rollouts of on-policy methods or a discriminator.

Multi-turn agent version: every step of a stored successful teacher episode is a state; its prompt is
exactly the chat the student policy would see there (the same renderer, history window and system
prompt, so the teacher's earlier actions are in the history); chosen = the teacher's reply at that
step, rejected = what the student (the stage's starting checkpoint) replied to that prompt, sampled
once and kept in the preference dataset. States where the student already gives the teacher's
action carry no preference and are dropped. The loss falls on agent tokens only (DPO scores the
completions). TRL's DPOTrainer does the optimization; the reference model is the starting policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdistill.agents.parsing import parse_for
from agentdistill.agents.policies import SYSTEM_PROMPT, Turn, action_text, render_messages, system_message
from agentdistill.envs.registry import env_class
from agentdistill.errors import AgentDistillError
from agentdistill.openmp import in_a_thread_of_its_own
from agentdistill.store.models import Dataset
from agentdistill.store.store import Store
from agentdistill.train.data import EpisodeFilter
from agentdistill.train.model import (Hardware, LoraSpec, is_adapter, load_student, record_checkpoint, save_student,
                                     spec_dict)

log = logging.getLogger(__name__)


@dataclass
class SODASpec:
    base_model: str = "local/smollm2-135m"
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    beta: float = 0.1
    sft_weight: float = 0.0  # + weight x NLL of the chosen reply (keeps the chosen likely, as RPO does)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    learning_rate: float = 5e-5
    max_length: int = 2048
    seed: int = 0
    window: int = 6  # the student policy's history
    snapshot_max_tokens: int = 64
    snapshot_temperature: float = 0.0
    concurrency: int = 8  # snapshot requests in flight (a batching backend answers them together)


@dataclass
class SODAResult:
    checkpoint_id: int
    path: Path
    dataset_id: int
    metrics: dict[str, Any]


def preference_rows(store: Store, episode_ids: list[int], spec: SODASpec) -> tuple[list[dict[str, Any]], dict]:
    """(rows of prompt / chosen / rejected chats, counts) from stored teacher steps and the student's snapshot."""
    from agentdistill.models import make_model

    episodes = EpisodeFilter(role="teacher", success=True, ids=episode_ids).select(store)
    if not episodes:
        raise AgentDistillError("SODA needs successful teacher episodes: the collect stage stored none")
    student = make_model(spec.base_model)
    states = []
    for ep in episodes:
        env_cls = env_class(ep.task.env)
        system = system_message(env_cls, SYSTEM_PROMPT)
        steps = sorted(ep.steps, key=lambda s: s.idx)
        turns = [Turn(s.observation, s.action, s.thought) for s in steps]
        for t, st in enumerate(steps):
            prompt = render_messages(system, ep.task.goal or "", turns[:t], st.observation, spec.window)
            states.append((ep, env_cls, st, prompt, action_text(turns[t])))
    params = {"n": 1, "temperature": spec.snapshot_temperature, "max_tokens": spec.snapshot_max_tokens,
              "stop": ["\nObservation"]}

    async def snapshot_all():
        sem = asyncio.Semaphore(spec.concurrency)

        async def one(prompt):
            async with sem:
                return (await student.acomplete(prompt, **params))[0].text

        return await asyncio.gather(*(one(s[3]) for s in states))

    snapshots = asyncio.run(snapshot_all())
    rows, agreed = [], 0
    for (ep, env_cls, st, prompt, chosen), rejected in zip(states, snapshots):
        rejected = rejected.strip()
        if parse_for(env_cls, rejected).action.lower() == st.action.lower():
            agreed += 1  # the student already acts like the teacher here: no preference to learn
            continue
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected or "(no answer)"}],
                     "episode_id": ep.id, "step_idx": st.idx})
    return rows, {"states": len(states), "agreed": agreed, "pairs": len(rows), "episodes": len(episodes)}


def build_preference_dataset(store: Store, episode_ids: list[int], out: Path, spec: SODASpec, tokenizer) -> tuple[int, Any, dict]:
    import datasets

    rows, stats = preference_rows(store, episode_ids, spec)
    kept = []
    for r in rows:  # never truncate: a cut chat trains on a prompt the policy never sees
        n = len(tokenizer.apply_chat_template(r["prompt"] + r["chosen"], tokenize=True, return_dict=False))
        m = len(tokenizer.apply_chat_template(r["prompt"] + r["rejected"], tokenize=True, return_dict=False))
        if max(n, m) <= spec.max_length:
            kept.append(r)
    stats["dropped_long"] = len(rows) - len(kept)
    if not kept:
        raise AgentDistillError("SODA found no state where the student's snapshot differs from the teacher "
                                "(or every chat is longer than max_length): nothing to align")
    ds = datasets.Dataset.from_list([{**r, "prompt": json.dumps(r["prompt"]), "chosen": json.dumps(r["chosen"]),
                                      "rejected": json.dumps(r["rejected"])} for r in kept])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    with store.session() as s, s.begin():
        row = Dataset(name=out.name, kind="soda", path=str(out.resolve()), n_rows=len(kept),
                      filters={"student": spec.base_model, "window": spec.window, **stats,
                               "snapshot": {"temperature": spec.snapshot_temperature,
                                            "max_tokens": spec.snapshot_max_tokens}},
                      episode_ids=sorted({r["episode_id"] for r in kept}))
        s.add(row)
        s.flush()
        dataset_id = row.id
    return dataset_id, ds, stats


@in_a_thread_of_its_own  # its OpenMP pool must not slow later generation (openmp.py)
def train_soda(store: Store, episode_ids: list[int], out: str | Path, spec: SODASpec, hw: Hardware | None = None,
               say: Callable[[str], None] = log.info) -> SODAResult:
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from agentdistill.train.sft import score_only_labelled_tokens

    hw = hw or Hardware.pick()
    out = Path(out)
    # a fresh adapter over the starting policy (an earlier adapter is merged in): DPO's reference, the
    # adapter-disabled model, is then exactly the policy the snapshot came from
    model, tok = load_student(spec.base_model, spec.lora, hw, fresh_adapter=True)
    dataset_id, ds, stats = build_preference_dataset(store, episode_ids, out.with_name(out.name + ".data"), spec, tok)
    say(f"  SODA: {stats['pairs']} preference pairs from {stats['states']} teacher states "
        f"({stats['agreed']} where the student already agreed)")
    train = ds.map(lambda r: {"prompt": json.loads(r["prompt"]), "chosen": json.loads(r["chosen"]),
                              "rejected": json.loads(r["rejected"])}, remove_columns=["episode_id", "step_idx"])
    losses = ["sigmoid"] + (["sft"] if spec.sft_weight else [])
    args = DPOConfig(
        output_dir=str(out.with_name(out.name + ".trainer")), num_train_epochs=spec.epochs, max_steps=spec.max_steps,
        learning_rate=spec.learning_rate, per_device_train_batch_size=spec.batch_size, beta=spec.beta,
        loss_type=losses, loss_weights=[1.0, spec.sft_weight] if spec.sft_weight else None,
        max_length=spec.max_length, seed=spec.seed,
        # the reference (adapter-off) log-probs once, before training: one forward less per step and epoch
        precompute_ref_log_probs=True, precompute_ref_batch_size=max(8, 2 * spec.batch_size), logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=True, **hw.trainer_args())
    score_only_labelled_tokens()
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"train_loss": result.training_loss, "steps": result.global_step, "wall_s": wall, **stats,
               "loss_curve": [[h["step"], h["loss"]] for h in logs],
               "reward_margin": [h.get("rewards/margins") for h in logs][-1:] or None,
               "device": hw.device, "bf16": hw.bf16}
    # an adapter over a merged earlier adapter is not loadable on its own: save the merged weights then
    save_student(trainer.model, tok, out, merge=is_adapter(spec.base_model))
    config = {**spec_dict(spec), "lora": spec_dict(spec.lora)}
    ckpt = record_checkpoint(store, out, spec.base_model, "soda", dataset_id=dataset_id, config=config, metrics=metrics)
    return SODAResult(ckpt, out, dataset_id, metrics)
