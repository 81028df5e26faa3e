"""llama.cpp in process (`llamacpp/...`): the SmolLM2 GGUF as shipped, n samples, stop, usage, a real
ScienceWorld episode stored with its model calls, one-line errors for bad ids."""

from __future__ import annotations

import pytest

from agentdistill.agents.rollout import run_recipe
from agentdistill.config import parse_recipe
from agentdistill.errors import ConfigError
from agentdistill.models.cost import Price
from agentdistill.models.registry import check_model_id, make_model
from agentdistill.store.store import Store
from tests.conftest import run_cli

pytest.importorskip("llama_cpp", reason="pip install 'llama-cpp-python>=0.3'")

MODEL = "llamacpp/smollm2-135m"
CHAT = [{"role": "system", "content": "You play a text game. Reply with one action."},
        {"role": "user", "content": "You are in a kitchen. There is a closed fridge. Task: open the fridge."}]


def test_greedy_is_deterministic_samples_differ_and_usage_is_counted():
    model = make_model(MODEL, price=Price(1.0, 2.0))
    (a,), (b,) = model.complete(CHAT, max_tokens=16), model.complete(CHAT, max_tokens=16)
    assert a.text == b.text and a.text.strip()
    assert a.prompt_tokens > 20 and 0 < a.completion_tokens <= 16 and a.latency > 0
    assert a.cost == pytest.approx((a.prompt_tokens * 1.0 + a.completion_tokens * 2.0) / 1e6)
    greedy = model.complete(CHAT, n=3, max_tokens=16)
    assert [c.text for c in greedy] == [a.text] * 3 and sum(c.completion_tokens for c in greedy) == a.completion_tokens
    sampled = model.complete(CHAT, n=4, temperature=1.0, max_tokens=24)
    assert len(sampled) == 4 and len({c.text for c in sampled}) > 1
    assert all(0 < c.completion_tokens <= 24 for c in sampled)
    # the prompt is paid once per call, each sample pays its own output
    assert sum(c.cost for c in sampled) == pytest.approx(
        (sampled[0].prompt_tokens * 1.0 + sum(c.completion_tokens for c in sampled) * 2.0) / 1e6)
    (cut,) = model.complete(CHAT, max_tokens=16, stop=[a.text.strip()[:3]])
    assert a.text.strip()[:3] not in cut.text


def test_a_scienceworld_episode_is_stored_with_its_model_calls(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe({"env": {"tasks": ["lifespan-longest-lived"], "variations": 1},
                           "student": {"model": MODEL, "max_tokens": 24, "history": 2},
                           "runner": {"max_steps": 3}})
    run_id = run_recipe(store, recipe, progress=False)
    (ep,) = store.episodes(run_id=run_id, with_steps=True)
    assert ep.status == "done" and ep.model == MODEL and ep.n_steps == 3
    for st in ep.steps:
        (call,) = st.calls
        assert st.answered_by == MODEL and call.model == MODEL and call.outputs == [st.raw_output]
        assert call.prompt_tokens == st.prompt_tokens > 100 and 0 < call.completion_tokens <= 24


@pytest.mark.parametrize("model_id, fragment", [
    ("llamacpp/nope", "give a .gguf file or one of smollm2-135m"),
    ("llamacpp//no/such/file.gguf", "no GGUF file at"),
])
def test_bad_ids_are_one_line(model_id, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        check_model_id(model_id)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[student]\nmodel = "{model_id}"\n')
    p = run_cli("run", str(recipe), "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and fragment in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "s.db").exists()


def test_a_file_that_is_not_a_gguf_is_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ConfigError, match="llama.cpp cannot load it"):
        make_model(f"llamacpp/{bad}")


@pytest.mark.parametrize("openmp", [True, False])
def test_a_build_with_openmp_is_named_with_its_fix_when_loaded(openmp, monkeypatch, caplog):
    """An OpenMP build halves llama.cpp's speed next to torch (their OpenMP runtime is shared): the user is
    told once per loaded file how to rebuild it."""
    from agentdistill.models import llamacpp

    monkeypatch.setattr(llamacpp, "built_with_openmp", lambda: openmp)
    monkeypatch.setattr(llamacpp._Loaded, "_cache", {})  # a fresh load, not the one earlier tests kept
    with caplog.at_level("WARNING", logger="agentdistill.models.llamacpp"):
        llamacpp.LlamaCppModel(MODEL)  # not make_model: it reuses the model an earlier test built
        llamacpp.LlamaCppModel(MODEL)
    warned = [r.getMessage() for r in caplog.records if "OpenMP" in r.getMessage()]
    assert warned == ([llamacpp.OPENMP_SLOWDOWN] if openmp else [])
    assert "CMAKE_ARGS=-DGGML_OPENMP=OFF" in llamacpp.OPENMP_SLOWDOWN


def test_the_installed_build_has_no_openmp():
    """scripts/install.sh builds llama-cpp-python without OpenMP (and rebuilds a cached OpenMP wheel)."""
    from agentdistill.models.llamacpp import built_with_openmp

    assert not built_with_openmp(), "run bash scripts/install.sh --test: it rebuilds llama-cpp-python without OpenMP"


SIGILL_LIBRARY = '''
import os, signal
__version__ = "0.0.0+sigill"
def llama_print_system_info():
    return b"AVX512 = 1 | AMX_INT8 = 1"
class Llama:
    def __init__(self, *args, **kwargs):  # as ggml's AMX matmul did on a Xeon with AMX: the process dies
        os.kill(os.getpid(), signal.SIGILL)
'''

PROBE_RECIPE = """
name = "probe"
[env]
name = "textworld"
tasks = ["easy"]
variations = 2
[teacher]
policy = "expert"
[student]
model = "llamacpp/smollm2-135m"
max_tokens = 16
history = 1
[runner]
max_steps = 3
[collect]
variations = 2
[eval]
arms = ["teacher", "base"]
"""


def test_a_build_that_dies_natively_is_caught_by_a_probe_in_one_line_and_the_run_resumes(tmp_path):
    """A llama-cpp-python whose model load kills the process with SIGILL (the AMX crash, simulated): the probe
    subprocess dies instead of the run, the run stops in one line naming the rebuild, the verdict is kept for
    that build, and the run resumes with a working build without redoing what it stored."""
    from agentdistill.paths import cache_dir
    from agentdistill.store.models import Episode

    fake = tmp_path / "sigill" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(SIGILL_LIBRARY)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "textworld").symlink_to(cache_dir() / "textworld", target_is_directory=True)  # the generated games
    recipe, db = tmp_path / "r.toml", tmp_path / "s.db"
    recipe.write_text(PROBE_RECIPE)
    env = {"AGENTDISTILL_CACHE": str(cache)}
    p = run_cli("run", str(recipe), "--db", str(db), "--no-progress", env={**env, "PYTHONPATH": str(fake.parent)})
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and "crashed (SIGILL)" in lines[0] and "-mno-amx-tile" in lines[0], p.stderr
    (verdict,) = (cache / "llamacpp-probe").glob("*.json")
    assert '"SIGILL"' in verdict.read_text()
    store = Store.open(str(db))
    (run,) = [r["run"] for r in store.list_runs() if r["run"].kind == "pipeline"]
    assert run.status != "done"
    stored = _count(store, Episode)
    assert stored >= 4  # the collected teacher episodes and the teacher arm's are kept
    store.close()
    # the real build: the probe passes (another build, another verdict) and the run finishes what it lacked
    p = run_cli("run", "--resume", run.id, "--db", str(db), "--no-progress", env=env)
    assert p.returncode == 0, p.stderr
    assert len(list((cache / "llamacpp-probe").glob("*.json"))) == 2
    store = Store.open(str(db))
    assert store.get_run(run.id).status == "done"
    assert _count(store, Episode) == stored + 2  # only the base arm's two episodes were new


def _count(store, model) -> int:
    from sqlalchemy import func, select

    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model))
