"""Two llama-cpp-python builds against each other: decode tokens/s of the SmolLM2 GGUF, each build in its own
subprocess (a build that dies, such as ggml's AMX kernels on a Xeon with AMX, is reported, not fatal), at each
thread count, in alternating rounds; the ratio is the median of the rounds'.

The installed build is one; the other is a directory holding another build's `llama_cpp` package, e.g. the
default native build (with AMX where the CPU has it):
    CMAKE_ARGS=-DGGML_OPENMP=OFF pip wheel --no-deps --no-cache-dir llama-cpp-python==0.3.36 -w /tmp/w
    pip install --no-deps --target /tmp/llama-amx /tmp/w/llama_cpp_python-*.whl
    python benchmarks/llamacpp_builds.py --other /tmp/llama-amx --threads 1 2

Run: python benchmarks/llamacpp_builds.py --other DIR [--threads 1 2] [--rounds 3] [--tokens 64]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys

from agentdistill.models.llamacpp import resolve_gguf

_DECODE = """
import json, sys, time
from llama_cpp import Llama, llama_print_system_info
path, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False)
prompt = "<|im_start|>user\\nDescribe a kitchen in a text adventure game.<|im_end|>\\n<|im_start|>assistant\\n"
llm.create_completion(prompt, max_tokens=4, temperature=0.0)  # warm-up
t0 = time.perf_counter()
out = llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, top_k=0, min_p=0.0)
dt = time.perf_counter() - t0
n = out["usage"]["completion_tokens"]
print(json.dumps({"tps": n / dt, "tokens": n, "amx": b"AMX" in llama_print_system_info()}))
"""


def decode(pythonpath: str | None, gguf: str, threads: int, tokens: int) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", _DECODE, gguf, str(threads), str(tokens)], env=env,
                       capture_output=True, text=True, timeout=600)
    if p.returncode < 0:
        return {"crash": signal.Signals(-p.returncode).name}
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="a directory holding another build's llama_cpp package")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    gguf = str(resolve_gguf("smollm2-135m"))
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    print("CPU flags:", " ".join(sorted(f for f in flags if f.startswith(("amx", "avx512")))) or "(no AVX-512/AMX)")
    for threads in args.threads:
        ratios, runs = [], {"installed": [], "other": []}
        for _ in range(args.rounds):  # alternating: drift on a shared machine hits both builds alike
            a, b = decode(None, gguf, threads, args.tokens), decode(args.other, gguf, threads, args.tokens)
            runs["installed"].append(a)
            runs["other"].append(b)
            if "tps" in a and "tps" in b:
                ratios.append(a["tps"] / b["tps"])
        cells = []
        for name, results in runs.items():
            ok = [r for r in results if "tps" in r]
            if ok:
                cells.append(f"{name} {statistics.median(r['tps'] for r in ok):.1f} tok/s "
                             f"(AMX {'on' if ok[0]['amx'] else 'off'}, {len(ok)}/{len(results)} ran)")
            else:
                cells.append(f"{name} died: {results[0].get('crash') or results[0].get('error')}")
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        print(f"{threads} thread(s): " + " | ".join(cells) + f" | installed/other {ratio} (median of {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
