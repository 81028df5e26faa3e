"""The default `agentdistill run` (the embedded pipeline), wall time with the local student's dynamic
batching and prefix cache both off ("before"), batching alone, and both on (the shipped default), each
in a fresh directory and store, measured in one run. Prints each stage's wall time and the ratios.

Only the stages where the student generates (eval.base, eval.sft at concurrency 4) can gain; collect is
the expert and SFT is training. The one-time conversion of the weights is done before timing.

Run: python benchmarks/default_run.py
"""

import os
import re
import subprocess
import sys
import tempfile
import time

# `agentdistill run` with LocalModel's `batching` default turned off (every request generated alone)
# and no prefix cache (every prompt prefilled whole)
NEITHER = """
import inspect, sys
from agentdistill.models import local
params = list(inspect.signature(local.LocalModel.__init__).parameters.values())[2:]  # after self, model_id
local.LocalModel.__init__.__defaults__ = tuple(False if p.name == "batching" else p.default for p in params)
local.PrefixCache = lambda: None
from agentdistill.cli import app
sys.argv = ["agentdistill", "run", "--no-progress"]
app()
"""
BATCHING = NEITHER.replace('False if p.name == "batching" else p.default', "p.default")
BOTH = BATCHING.replace("local.PrefixCache = lambda: None\n", "")


def run(code: str, label: str) -> tuple[float, dict[str, float], str]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], cwd=d, capture_output=True, text=True,
                           env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200"})
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{label}: agentdistill run failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    stages = {m[1]: float(m[2]) for m in re.finditer(r"^(\S+): done in (\d+) s", p.stdout, re.M)}
    table = "\n".join(line for line in p.stdout.splitlines() if re.match(r"\s*(arm|base|sft|teacher)\s", line))
    print(f"{label}: {wall:.0f} s  " + "  ".join(f"{k} {v:.0f}" for k, v in stages.items()), flush=True)
    return wall, stages, table


def main():
    from agentdistill.models.local import resolve_checkpoint

    resolve_checkpoint("smollm2-135m")  # the one-time GGUF conversion, outside the timings
    arms = [("neither", run(NEITHER, "batching off, prefix cache off")),
            ("batching", run(BATCHING, "batching on,  prefix cache off")),
            ("both", run(BOTH, "batching on,  prefix cache on "))]
    print()
    print(arms[-1][1][2])
    print()
    (_, before), *after = arms
    for stage in ("eval.base", "eval.sft"):
        if all(stage in a[1] and a[1][stage] for _, a in arms):
            print(f"{stage}: " + " -> ".join(f"{a[1][stage]:.0f} s ({name})" for name, a in arms) + "  = " +
                  ", ".join(f"{before[1][stage] / a[1][stage]:.2f}x" for _, a in after))
    print("default `agentdistill run`: " + " -> ".join(f"{a[0]:.0f} s ({name})" for name, a in arms) + "  = " +
          ", ".join(f"{before[0] / a[0]:.2f}x ({name} vs neither)" for name, a in after))


if __name__ == "__main__":
    main()
