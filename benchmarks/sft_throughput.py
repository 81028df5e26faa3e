"""SFT training throughput: our path vs plain TRL SFTTrainer on the same chats (goal: ratio >= 0.95).

Ours: `agentdistill.train.sft` on the dataset `train data` builds (pre-tokenized, agent-only loss
mask). Plain TRL: SFTTrainer on the same chats as a conversational `messages` dataset, tokenized by
TRL itself (full-sequence loss: SmolLM2's template has no generation markers, so TRL's
assistant_only_loss cannot be used). Same model, LoRA, batch, steps and sequence lengths; the
token count is TRL's own `num_tokens`; rounds alternate so machine noise hits both alike.

Run: python benchmarks/sft_throughput.py [--steps 8] [--rounds 2] [--device auto]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from agentdistill.agents.rollout import run_recipe  # noqa: E402
from agentdistill.config import parse_recipe  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402
from agentdistill.train.data import EpisodeFilter, build_sft_dataset  # noqa: E402
from agentdistill.train.model import Hardware, LoraSpec, base_checkpoint  # noqa: E402
from agentdistill.train.sft import SFTSpec, sft_trainer  # noqa: E402

TASKS = ["power-component", "identify-life-stages-2"]


def timed_train(trainer) -> tuple[float, float]:
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    return logs[-1]["num_tokens"], wall


def plain_trl(messages_ds, spec: SFTSpec, hw: Hardware, out: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = base_checkpoint(spec.base_model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if hw.bf16 else torch.float32)
    args = SFTConfig(output_dir=out, max_steps=spec.max_steps, learning_rate=spec.learning_rate,
                     per_device_train_batch_size=spec.batch_size, max_length=spec.max_length, logging_steps=1,
                     save_strategy="no", report_to=[], disable_tqdm=True, seed=spec.seed, **hw.trainer_args())
    return SFTTrainer(model=model, args=args, train_dataset=messages_ds, processing_class=tok,
                      peft_config=spec.lora.config())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    hw = Hardware.pick(args.device)
    work = tempfile.mkdtemp(prefix="sft-bench-")
    store = Store.open(os.path.join(work, "bench.db"))
    run_recipe(store, parse_recipe({"env": {"split": "train", "tasks": TASKS, "variations": 4},
                                    "teacher": {"policy": "expert"}, "runner": {"max_steps": 40}}), progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_checkpoint("local/smollm2-135m"))
    _, ds = build_sft_dataset(store, tok, os.path.join(work, "ds"), EpisodeFilter(tasks=TASKS), window=4)
    import json

    import datasets

    messages_ds = datasets.Dataset.from_dict({"messages": [json.loads(m) for m in ds["messages"]]})
    spec = SFTSpec(lora=LoraSpec(r=16, alpha=32, dropout=0.0), max_steps=args.steps, batch_size=args.batch_size,
                   learning_rate=1e-4)
    print(f"{len(ds)} chats, {sum(len(x) for x in ds['input_ids'])} tokens; device {hw.device}, bf16 {hw.bf16}; "
          f"{args.steps} steps x batch {args.batch_size}, {args.rounds} alternating rounds")
    totals = {"ours": [0.0, 0.0], "plain TRL": [0.0, 0.0]}
    for r in range(args.rounds):
        for name in (("ours", "plain TRL") if r % 2 == 0 else ("plain TRL", "ours")):
            trainer = (sft_trainer(ds, spec, hw, os.path.join(work, f"o{r}")) if name == "ours"
                       else plain_trl(messages_ds, spec, hw, os.path.join(work, f"p{r}")))
            tokens, wall = timed_train(trainer)
            totals[name][0] += tokens
            totals[name][1] += wall
            print(f"round {r} {name:9}: {tokens:.0f} tokens in {wall:.1f} s = {tokens / wall:.0f} tokens/s")
            del trainer
    ours = totals["ours"][0] / totals["ours"][1]
    plain = totals["plain TRL"][0] / totals["plain TRL"][1]
    print(f"\nours {ours:.0f} tokens/s, plain TRL {plain:.0f} tokens/s -> ratio {ours / plain:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
