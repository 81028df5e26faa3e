"""Local students' speed: SmolLM2-135M playing real TextWorld games (the default pipeline's setting:
24 tokens an action, 2 turns of history), measured in one run.

1. transformers with continuous batching (models/engine.py): 8 concurrent episodes vs 1, episodes per
   minute (goal >= 3x);
2. at 8 concurrent episodes: batching on vs off; continuous batching vs padded batches of `model.generate`
   (the batcher that regroups episodes after each batch, batching.py: what `local/` used before the engine);
3. llama.cpp vs transformers (`local/smollm2-135m`): generated tokens per second on the same stored
   prompts, one request at a time (goal >= 4x; the backends alternate over `--tps-rounds` rounds and the
   median of the rounds' ratios is the figure: transformers' speed drifts within a long process), with how
   often the greedy answers are the same text, and
   episodes per minute at 1 and 8 concurrent episodes. llama.cpp runs the transformers checkpoint exported
   by `agentdistill train gguf` (q8_0, its default: the file a distilled student is served from), and for
   tokens/s also the GGUF `llamacpp/smollm2-135m` ships as (Q4_1, a layout with no fast CPU kernel);
4. transformers' prefix cache (each prompt prefills only what follows its longest prefix shared with a
   kept prompt) on vs off, episodes per minute at 1 and 8 concurrent episodes; and for a student carrying
   a skill pack (Trace2Skill, distilled from the warm-up's expert episodes, inline in the system prompt as
   the efficacy table's pack arms run it) at 8 concurrent episodes.

Every arm plays the same games and starts from an empty prefix cache (a kept prompt from an earlier arm
would be a free hit).

Run: python benchmarks/local_inference.py [--episodes 8] [--steps 5] [--tps-rounds 3]
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.agents.policies import ExpertPolicy, LLMPolicy  # noqa: E402
from agentdistill.agents.runner import EnvPool, Runner, make_plan  # noqa: E402
from agentdistill.envs import make  # noqa: E402
from agentdistill.models.engine import Engine  # noqa: E402
from agentdistill.models.gguf_export import export_gguf  # noqa: E402
from agentdistill.models.llamacpp import LlamaCppModel, built_with_openmp  # noqa: E402
from agentdistill.models.local import LocalModel, resolve_checkpoint  # noqa: E402
from agentdistill.models.prefix_cache import PrefixCache  # noqa: E402
from agentdistill.skills.trace2skill import TraceAnalyst, distill  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402


class StepLog:
    """Within `with`, every forward pass of the engine: (sequences, tokens fed, of them prompt tokens, seconds)."""

    def __enter__(self):
        self.steps: list[tuple[int, int, int, float]] = []
        self.forward = forward = Engine._forward

        def timed(engine, feeds):
            prompt = sum(len(toks) for s, toks in feeds if s.prefilling)  # before the pass moves them on
            t0 = time.perf_counter()
            out = forward(engine, feeds)
            self.steps.append((len(feeds), sum(len(toks) for _, toks in feeds), prompt, time.perf_counter() - t0))
            return out

        Engine._forward = timed
        return self

    def __exit__(self, *exc):
        Engine._forward = self.forward

    def summary(self) -> str:
        prefill = [s for s in self.steps if s[2]]
        decode = [s for s in self.steps if not s[2]]
        rows = sum(s[0] for s in decode) / max(len(decode), 1)
        return (f"{sum(s[3] for s in self.steps):.1f} s in forward passes: {len(prefill)} steps with prompt tokens "
                f"({sum(s[2] for s in prefill)} prompt tokens, {sum(s[3] for s in prefill):.1f} s), {len(decode)} decoding "
                f"steps ({sum(s[3] for s in decode):.1f} s, {rows:.1f} sequences and "
                f"{1000 * sum(s[3] for s in decode) / max(len(decode), 1):.0f} ms a step on average)")


def episodes(store, envs, plan, policy, concurrency, steps, label) -> tuple[float, int, str]:
    """Seconds for the plan at this concurrency, steps taken, run id."""
    run_id = store.create_run(label, {})
    pool = EnvPool(lambda: None, 0)
    for env in envs[:concurrency]:
        pool._free.put_nowait(env)  # started instances, as a run's pool holds them
    runner = Runner(store, run_id, {"student": policy}, {"student": steps})
    t0 = time.perf_counter()
    asyncio.run(runner.run(plan, pool, concurrency, progress=False))
    elapsed = time.perf_counter() - t0
    eps = store.episodes(run_id=run_id)
    assert len(eps) == len(plan) and all(e.status == "done" for e in eps), [e.error for e in eps]
    return elapsed, sum(e.n_steps for e in eps), run_id


def tokens_per_second(model, prompts, max_tokens: int) -> tuple[float, int, list[str]]:
    """Generated tokens per second over the prompts, one at a time, greedy; the tokens and the texts."""
    t0, tokens, texts = time.perf_counter(), 0, []
    for messages in prompts:
        (c,) = model.complete(messages, max_tokens=max_tokens)
        tokens += c.completion_tokens
        texts.append(c.text)
    return tokens / (time.perf_counter() - t0), tokens, texts


def pack_speedup(store, envs, plan, model, expert_run: str, steps: int) -> tuple[int, dict[str, float]]:
    """Seconds for the plan with a Trace2Skill pack inline, the prefix cache off then on."""
    experts = store.episodes(run_id=expert_run, with_steps=True)
    pack = distill(store, experts, name="tw-pack", analyst=TraceAnalyst()).version
    tokens = len(model.tokenizer(pack.pack.as_prompt())["input_ids"])
    with_pack = LLMPolicy(model, max_tokens=24, history=2, skills=[(pack.pack, pack.id)])
    secs = {}
    for label, prefixes in [("prefix cache off", None), ("prefix cache on", PrefixCache())]:
        model._loaded.prefixes = prefixes
        secs[label], n_steps, _ = episodes(store, envs, plan, with_pack, len(plan), steps, f"pack, {label}")
        print(f"skill pack, {label:17s} concurrency {len(plan)}: {len(plan)} episodes, {n_steps} steps in "
              f"{secs[label]:6.1f} s = {len(plan) / secs[label] * 60:5.1f} episodes/min", flush=True)
    return tokens, secs


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive whole number")
    return int(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=_positive, default=8)
    ap.add_argument("--steps", type=_positive, default=5)
    ap.add_argument("--max-tokens", type=_positive, default=48, help="for the tokens/s comparison")
    ap.add_argument("--tps-rounds", type=_positive, default=3, help="rounds of the tokens/s comparison")
    ap.add_argument("--pack-steps", type=_positive, default=3, help="steps per episode with the skill pack")
    ap.add_argument("--pack-only", action="store_true", help="measure only 4. (the prefix cache)")
    args = ap.parse_args()
    n = args.episodes
    # an OpenMP build slows llama.cpp (and torch) once both have run in this process: say which this is
    print(f"llama-cpp-python built {'with' if built_with_openmp() else 'without'} OpenMP", flush=True)
    envs = [make("textworld") for _ in range(n)]
    tasks = envs[0].tasks("test", ["easy"])[:n]
    plan = make_plan(["student"], tasks, [0])
    batched = LocalModel("local/smollm2-135m")
    unbatched = LocalModel("local/smollm2-135m", batching=False)
    shipped = LlamaCppModel("llamacpp/smollm2-135m")
    policy = lambda m: LLMPolicy(m, max_tokens=24, history=2)  # noqa: E731
    rows = []
    try:
        with tempfile.TemporaryDirectory() as d:
            store = Store.open(os.path.join(d, "b.db"))
            # not timed: the checkpoint transformers runs, as `agentdistill train gguf` exports a student
            llama = LlamaCppModel("llamacpp/" + str(export_gguf(resolve_checkpoint("smollm2-135m"),
                                                                Path(d) / "student-q8_0.gguf", "q8_0")))
            # not timed: games generated and weights loaded once
            warm = Runner(store, store.create_run("warm", {}), {"student": ExpertPolicy()}, {"student": 50})
            pool = EnvPool(lambda: None, 0)
            for env in envs:
                pool._free.put_nowait(env)
            asyncio.run(warm.run(plan, pool, n, progress=False))
            for m in (batched, llama, shipped):
                m.complete([{"role": "user", "content": "warm-up"}], max_tokens=4)
            pack_tokens, pack_secs = pack_speedup(store, envs, plan, batched, warm.run_id, args.pack_steps)
            if args.pack_only:
                return print(f"4. a {pack_tokens}-token skill pack in the system prompt, {n} concurrent episodes: "
                             f"prefix cache on vs off {pack_secs['prefix cache off'] / pack_secs['prefix cache on']:.2f}x "
                             "episodes/min")
            for label, model, conc in [("transformers, batched", batched, 1), ("transformers, batched", batched, n),
                                       ("transformers, unbatched", unbatched, n), ("padded batches", batched, n),
                                       ("no prefix cache", batched, 1),
                                       ("no prefix cache", batched, n), ("llama.cpp", llama, 1),
                                       ("llama.cpp", llama, n)]:
                if isinstance(model, LocalModel):  # batched and unbatched share the loaded weights and cache
                    model._loaded.prefixes = None if label == "no prefix cache" else PrefixCache()
                    with model._loaded._cache_lock:  # the next request starts the scheduler this arm asks for
                        model._loaded.end_batcher()
                    model._loaded.continuous = label != "padded batches"
                with StepLog() as log:
                    secs, steps, run_id = episodes(store, envs, plan, policy(model), conc, args.steps, label)
                rows.append((label, conc, secs, steps, run_id))
                print(f"{label:24s} concurrency {conc}: {n} episodes, {steps} steps in {secs:6.1f} s = "
                      f"{n / secs * 60:5.1f} episodes/min", flush=True)
                if log.steps:
                    print(f"{'':24s} {log.summary()}", flush=True)
            prompts = [c.messages for e in store.episodes(run_id=rows[0][4], with_steps=True)
                       for s in e.steps for c in s.calls]
            batched._loaded.prefixes = PrefixCache()  # as llama.cpp keeps its last prompt's KV
            batched._loaded.continuous = True
            # transformers through its batcher thread, one request at a time: torch running on a second
            # long-lived thread (this one) would share its OpenMP runtime with the batcher's threads, which then
            # stop spin-waiting (more OpenMP threads than cores) and decode ~1.6x slower on 2 cores
            rounds = [[tokens_per_second(m, prompts, args.max_tokens) for m in (batched, llama, shipped)]
                      for _ in range(args.tps_rounds)]
            (_, tok_hf, text_hf), (_, tok_ll, text_ll), (_, tok_sh, text_sh) = rounds[0]
    finally:
        for env in envs:
            env.close()
    epm = {(label, conc): n / secs * 60 for label, conc, secs, _, _ in rows}
    print()
    print(f"1. batching, {n} concurrent vs 1:  {epm[('transformers, batched', n)] / epm[('transformers, batched', 1)]:.2f}x "
          f"episodes/min (goal >= 3x)")
    print(f"2. at {n} concurrent, batched vs unbatched: "
          f"{epm[('transformers, batched', n)] / epm[('transformers, unbatched', n)]:.2f}x; continuous batching vs padded "
          f"batches of generate: {epm[('transformers, batched', n)] / epm[('padded batches', n)]:.2f}x "
          f"(padded batches {n} vs 1: {epm[('padded batches', n)] / epm[('transformers, batched', 1)]:.2f}x)")
    same = lambda texts: sum(a == b for a, b in zip(texts, text_hf))  # noqa: E731
    tps = lambda i: ", ".join(f"{r[i][0]:.0f}" for r in rounds)  # noqa: E731
    ratio = lambda i: [r[i][0] / r[0][0] for r in rounds]  # noqa: E731
    print(f"3. llama.cpp (q8_0 export) vs transformers, same {len(prompts)} prompts one at a time, {len(rounds)} "
          f"rounds: {tps(1)} vs {tps(0)} tokens/s, median ratio {statistics.median(ratio(1)):.2f}x (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratio(1))}; goal >= 4x; {tok_ll} vs {tok_hf} tokens; the same greedy "
          f"text for {same(text_ll)} of {len(prompts)} prompts)")
    print(f"   the GGUF as shipped (Q4_1): {tps(2)} tokens/s, median ratio {statistics.median(ratio(2)):.2f}x "
          f"({tok_sh} tokens; the same greedy text for {same(text_sh)} of {len(prompts)})")
    print(f"   episodes/min at 1: {epm[('llama.cpp', 1)] / epm[('transformers, batched', 1)]:.2f}x, at {n}: "
          f"{epm[('llama.cpp', n)] / epm[('transformers, batched', n)]:.2f}x (llama.cpp vs batched transformers)")
    print(f"4. prefix cache on vs off: {epm[('transformers, batched', 1)] / epm[('no prefix cache', 1)]:.2f}x episodes/min "
          f"at 1, {epm[('transformers, batched', n)] / epm[('no prefix cache', n)]:.2f}x at {n}; batching {n} vs 1 "
          f"without it: {epm[('no prefix cache', n)] / epm[('no prefix cache', 1)]:.2f}x")
    print(f"   a {pack_tokens}-token skill pack in the system prompt, {n} concurrent episodes: prefix cache on vs off "
          f"{pack_secs['prefix cache off'] / pack_secs['prefix cache on']:.2f}x episodes/min")


if __name__ == "__main__":
    main()
