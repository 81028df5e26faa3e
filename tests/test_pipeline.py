"""Pipeline recipes end to end on real parts: TextWorld games, SmolLM2 weights, real TRL steps.

One small recipe runs every stage (collect, every distill method, every kind of eval arm, report);
an unchanged re-run does no work; a run killed mid-stage (Ctrl-C, then SIGKILL) is finished by
`--resume` without repeating finished stages or episodes; bad stage tables fail in one line and
write nothing; the HTML report renders in real Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agentdistill.config import parse_recipe
from agentdistill.errors import ConfigError
from agentdistill.store.models import Checkpoint, Dataset, Episode, Evaluation, Run, SkillVersion, Stage
from agentdistill.store.store import Store
from tests.conftest import run_cli

pytest.importorskip("textworld", reason="pip install textworld")
pytest.importorskip("trl", reason="pip install 'agentdistill[train]'")

BASE = """
name = "tiny"
workdir = "{workdir}"
[env]
name = "textworld"
split = "test"
tasks = ["easy"]
variations = 2
[teacher]
policy = "expert"
price = {{ per_action = 0.003 }}
[student]
model = "local/smollm2-135m"
max_tokens = 16
history = 1
price = {{ input_per_mtok = 0.05, output_per_mtok = 0.10 }}
[runner]
concurrency = 2
max_steps = 3
[collect]
variations = 3
"""

EVERY_STAGE = BASE + """
[[distill]]
name = "sft"
method = "sft"
max_steps = 2
batch_size = 2
dev_variations = 1
[[distill]]
name = "tcod"
method = "opd"
init = "sft"
curriculum = "f2b"
iterations = 1
episodes_per_iteration = 1
max_steps = 2
dev_variations = 1
[[distill]]
name = "t2s"
method = "skills"
[[distill]]
name = "skillsd"
method = "skill_sd"
skill = "t2s"
iterations = 1
episodes_per_iteration = 1
max_steps = 2
dev_variations = 0
[[distill]]
name = "soda"
method = "soda"
max_steps = 1
batch_size = 2
[[distill]]
name = "icd"
method = "icd"
retrieval = "bm25"
[[eval.arm]]
name = "cascade-sft"
policy = "cascade"
model = "sft"
icd = "icd"
[report]
html = "{workdir}/report.html"
json = "{workdir}/report.json"
"""


def _counts(db: str) -> dict[str, int]:
    store = Store.open(db)
    with store.session() as s:
        out = {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in
               (Run, Episode, Checkpoint, Dataset, SkillVersion, Evaluation)}
    store.close()
    return out


def test_bad_stage_tables_fail_in_one_line_and_write_nothing(tmp_path):
    cases = {
        'collect = { variations = 0 }': "collect.variations",
        '[[distill]]\nname = "sft"\nmethod = "sft"': "add a [collect] table",
        '[collect]\n[[distill]]\nname = "x"\nmethod = "distil"': "distill.0.method: unknown distill method 'distil'",
        '[collect]\n[[distill]]\nname = "o"\nmethod = "opd"\ninit = "sft"': "distill.0.init",
        '[collect]\n[[distill]]\nname = "sft"\nmethod = "sft"\nepochs = -1': "distill.0.sft.epochs",
        '[collect]\n[eval]\narms = ["base", "nope"]': "unknown arm 'nope'",
        '[collect]\n[[eval.arm]]\nname = "c"\nmodel = "sft"': "eval.arm.0.model",
        '[report]\nbase = "sft"\n[eval]': "report.base",
    }
    head = '[teacher]\npolicy = "expert"\n[student]\nmodel = "local/smollm2-135m"\n[env]\nname = "textworld"\n'
    for body, fragment in cases.items():
        recipe = tmp_path / "bad.toml"
        # top-level keys must come before the first table
        text = (body + "\n" + head) if body.startswith("collect =") else head + body + "\n"
        recipe.write_text(text)
        with pytest.raises(ConfigError) as e:
            from agentdistill.config import load_recipe

            load_recipe(recipe)
        assert fragment in str(e.value) and "\n" not in str(e.value), (body, str(e.value))
    p = run_cli("run", str(recipe), "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "report.base" in p.stderr, p.stderr
    assert not (tmp_path / "s.db").exists()


def test_every_stage_end_to_end_then_an_unchanged_rerun_does_no_work(tmp_path):
    workdir = tmp_path / "work"
    recipe = tmp_path / "r.toml"
    recipe.write_text(EVERY_STAGE.format(workdir=workdir))
    db = str(tmp_path / "s.db")
    p = run_cli("run", str(recipe), "--db", db, "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    store = Store.open(db)
    (pipeline,) = [r["run"] for r in store.list_runs() if r["run"].kind == "pipeline"]
    stages = {st.name: st for st in store.stages(pipeline.id)}
    arms = ["base", "sft", "tcod", "t2s", "skillsd", "soda", "icd", "cascade-sft", "teacher"]
    assert list(stages) == ["collect", *(f"distill.{n}" for n in ("sft", "tcod", "t2s", "skillsd", "soda", "icd")),
                            *(f"eval.{a}" for a in arms), "report"]
    assert all(st.status == "done" and st.reused_from is None for st in stages.values())
    # what each stage produced is in the store, by id
    with store.session() as s:
        for name in ("sft", "tcod", "skillsd", "soda"):
            ckpt = s.get(Checkpoint, stages[f"distill.{name}"].outputs["checkpoint_id"])
            assert ckpt is not None and Path(ckpt.path).exists()
        assert s.get(Checkpoint, stages["distill.tcod"].outputs["checkpoint_id"]).method == "tcod-f2b"
        assert s.get(Checkpoint, stages["distill.soda"].outputs["checkpoint_id"]).method == "soda"
        soda_data = s.get(Dataset, stages["distill.soda"].outputs["dataset_id"])
        assert soda_data.kind == "soda" and soda_data.n_rows > 0
        assert s.get(SkillVersion, stages["distill.t2s"].outputs["skill_version_id"]) is not None
    assert Path(stages["distill.icd"].outputs["index"], "meta.json").exists()
    collected = stages["collect"].outputs
    assert collected["episodes"] == 3 and collected["successes"] == 3
    # every arm played the same held-out games and seeds
    for arm in arms:
        eps = store.episodes(run_id=stages[f"eval.{arm}"].outputs["run_id"])
        assert sorted((e.task.name, e.task.variation, e.seed) for e in eps) == [("easy", 2000, 0), ("easy", 2001, 0)]
        assert all(e.task.split == "test" for e in eps)
    cascade = store.episodes(run_id=stages["eval.cascade-sft"].outputs["run_id"], with_steps=True)
    assert all("deferred" in st.info and "demos" in st.info for e in cascade for st in e.steps)
    # the report: stored, and written as JSON and HTML
    report = json.loads((workdir / "report.json").read_text())
    assert [a["arm"] for a in report["arms"]] == arms
    teacher = report["arms"][-1]
    assert teacher["success"][0] == 1.0 and teacher["diff_vs_base"][0] == 1.0 - report["arms"][0]["success"][0]
    # an arm that continues a checkpoint is also compared, paired, with that checkpoint's arm
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert by_arm["tcod"]["diff_vs_init"]["init"] == "sft" and "diff_vs_init" not in by_arm["sft"]
    assert by_arm["tcod"]["diff_vs_init"]["ci"][0] == pytest.approx(by_arm["tcod"]["success"][0] - by_arm["sft"]["success"][0])
    assert {"sft", "soda"} <= set(report["curves"]) and report["curves"]["tcod"]["kind"] == "divergence"
    with store.session() as s:
        ev = s.get(Evaluation, stages["report"].outputs["evaluation_id"])
        assert ev.metrics["pipeline_run"] == pipeline.id and len(ev.metrics["arms"][0]["outcomes"]) == 2
    assert "teacher" in (workdir / "report.html").read_text()
    assert "beat base" in p.stdout and "vs base" in p.stdout and "tcod vs sft" in p.stdout

    # unchanged inputs: every stage reused, nothing computed or stored but the new pipeline run's records
    before = _counts(db)
    t0 = time.perf_counter()
    p = run_cli("run", str(recipe), "--db", db, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    after = _counts(db)
    assert after == {**before, "runs": before["runs"] + 1}, (before, after)
    assert p.stdout.count("unchanged, reused") == len(stages) and "running" not in p.stdout
    assert time.perf_counter() - t0 < 60

    # --only recomputes one stage; the stages downstream of it are named, not silently stale
    p = run_cli("run", str(recipe), "--db", db, "--no-progress", "--only", "soda")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "distill.soda: running" in p.stdout and "not run (their inputs changed" in p.stdout
    assert "eval.soda" in p.stdout.split("not run")[1]
    assert _counts(db)["checkpoints"] == before["checkpoints"] + 1
    # the first SODA checkpoint is still where its record says (the recomputation wrote elsewhere)
    with store.session() as s:
        assert Path(s.get(Checkpoint, stages["distill.soda"].outputs["checkpoint_id"]).path).exists()

    # the report command reprints it, as JSON and as HTML
    p = run_cli("report", "efficacy", pipeline.id[:8], "--db", db, "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["pipeline_run"] == pipeline.id


def _stage_rows(db: str) -> list[tuple[str, str, dict]]:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            return [(r.name, r.status, json.loads(r.outputs) if isinstance(r.outputs, str) else r.outputs)
                    for r in c.execute(select(Stage.name, Stage.status, Stage.outputs))]
    except OperationalError:
        return []
    finally:
        engine.dispose()


def _episodes_done(db: str, run_id: str) -> int:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            return c.scalar(select(func.count()).select_from(Episode).where(Episode.run_id == run_id,
                                                                            Episode.status == "done")) or 0
    finally:
        engine.dispose()


def _start(recipe: Path, db: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentdistill", "run", str(recipe), "--db", db, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(db: str, stage: str, episodes: int, proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait until `stage` is running and its rollout run has finished `episodes` episodes; its run id."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        for name, status, outputs in _stage_rows(db):
            if name == stage and status == "running" and outputs.get("run_id"):
                if _episodes_done(db, outputs["run_id"]) >= episodes:
                    return outputs["run_id"]
        time.sleep(0.1)
    raise AssertionError(f"{stage} never reached {episodes} finished episodes")


def test_ctrl_c_then_sigkill_mid_stage_and_resume_repeats_nothing(tmp_path):
    workdir = tmp_path / "work"
    recipe = tmp_path / "r.toml"
    # games generated into a fresh folder: the stages take long enough to be caught mid-way
    recipe.write_text(BASE.format(workdir=workdir).replace("variations = 3", "variations = 6")
                      .replace("variations = 2", f'variations = 6\noptions = {{ games_dir = "{tmp_path / "games"}" }}')
                      + '[[distill]]\nname = "sft"\nmethod = "sft"\nmax_steps = 2\nbatch_size = 2\ndev_variations = 0\n[eval]\n')
    db = str(tmp_path / "s.db")

    # Ctrl-C while the teacher is being collected: one line, exit 130, the stage marked as interrupted
    proc = _start(recipe, db)
    collect_run = _wait_for(db, "collect", 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    store = Store.open(db)
    (pipeline,) = [r["run"] for r in store.list_runs() if r["run"].kind == "pipeline"]
    assert [(st.name, st.status, st.error) for st in store.stages(pipeline.id)] == [("collect", "error", "interrupted")]
    kept = {e.plan_index: e.id for e in store.episodes(run_id=collect_run, status="done")}
    assert len(kept) >= 2

    # resume; SIGKILL (a crash) once the base arm has finished an episode
    proc = subprocess.Popen([sys.executable, "-m", "agentdistill", "run", "--resume", pipeline.id, "--db", db,
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    base_run = _wait_for(db, "eval.base", 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_base = {e.plan_index: e.id for e in store.episodes(run_id=base_run, status="done")}
    with store.session() as s:
        checkpoints = s.scalar(select(func.count()).select_from(Checkpoint))
    assert checkpoints == 1

    p = run_cli("run", "--resume", pipeline.id[:8], "--db", db, "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "collect: unchanged, reused" in p.stdout and "distill.sft: unchanged, reused" in p.stdout
    assert "eval.base: running (continuing an interrupted attempt)" in p.stdout
    stages = {st.name: st for st in store.stages(pipeline.id)}
    assert all(st.status == "done" for st in stages.values()) and store.get_run(pipeline.id).status == "done"
    # the collect stage continued its run: the episodes finished before Ctrl-C kept their ids, none twice
    assert stages["collect"].outputs["run_id"] == collect_run
    collected = store.episodes(run_id=collect_run)
    assert sorted(e.plan_index for e in collected) == list(range(6))
    assert {e.plan_index: e.id for e in collected if e.plan_index in kept} == kept
    # the base arm continued its run the same way; no stage was computed twice
    assert stages["eval.base"].outputs["run_id"] == base_run
    base_eps = store.episodes(run_id=base_run)
    assert sorted(e.plan_index for e in base_eps) == list(range(6))
    assert {e.plan_index: e.id for e in base_eps if e.plan_index in finished_base} == finished_base
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 1
        kinds = [k for (k,) in s.execute(select(Run.kind))]
    assert kinds.count("collect") == 1 and kinds.count("eval") == 3 and kinds.count("pipeline") == 1


def test_collect_reuses_teacher_episodes_already_in_the_store(tmp_path):
    db = str(tmp_path / "s.db")
    p = run_cli("collect", "--policy", "expert", "--env", "textworld", "--task", "easy", "--variations", "3",
                "--db", db)
    assert p.returncode == 0, p.stderr
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE.format(workdir=tmp_path / "w") + "[eval]\narms = [\"teacher\"]\n")
    p = run_cli("run", str(recipe), "--db", db, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "3 teacher episodes, 3 successful, reused from the store" in p.stdout
    store = Store.open(db)
    with store.session() as s:
        assert [k for (k,) in s.execute(select(Run.kind))].count("collect") == 0  # nothing collected again


@pytest.mark.browser
def test_html_report_renders_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium: apt-get install chromium")
    from agentdistill.report.html import write_html

    report = {
        "pipeline_run": "abc123", "recipe": "demo", "base": "base",
        "env": {"name": "textworld", "split": "test", "tasks": ["easy"]},
        "collect": {"episodes": 60, "successes": 60, "cost": 0.54},
        "arms": [
            {"arm": "base", "episodes": 20, "errors": 0, "success": [0.0, 0.0, 0.0], "score": 0.0, "steps": 5.0,
             "prompt_tokens": 29577, "completion_tokens": 1391, "cost_per_episode": 0.00008, "teacher_step_share": 0.0,
             "uses": [], "train_s": 0.0, "wall_s": 137.0, "verdict": "-"},
            {"arm": "sft", "episodes": 20, "errors": 0, "success": [0.45, 0.25, 0.65], "score": 45.0, "steps": 4.1,
             "prompt_tokens": 25571, "completion_tokens": 458, "cost_per_episode": 0.00007,
             "teacher_step_share": 0.0, "uses": ["sft"], "train_s": 111.0, "wall_s": 74.0,
             "diff_vs_base": [0.45, 0.25, 0.65], "verdict": "better"},
            {"arm": "teacher", "episodes": 20, "errors": 0, "success": [1.0, 1.0, 1.0], "score": 100.0, "steps": 3.0,
             "prompt_tokens": 0, "completion_tokens": 0, "cost_per_episode": 0.00885, "teacher_step_share": 1.0,
             "uses": [], "train_s": 0.0, "wall_s": 1.0, "diff_vs_base": [1.0, 1.0, 1.0], "verdict": "better"},
        ],
        "curves": {"sft": {"kind": "loss", "x": [1, 2, 3, 4], "y": [2.3, 1.1, 0.4, 0.2], "method": "sft"}},
    }
    report["arms"][1]["arm"] = "sft<script>document.title='pwned'</script>"
    path = write_html(report, tmp_path / "r.html")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                      "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(path.as_uri())
        png = page.screenshot(full_page=True)
        table = page.inner_text("table")
        title = page.title()
        svgs = page.locator("svg").count()
        browser.close()
    assert "45% [25, 65]" in table and "+45% [+25, +65]" in table and "100% [100, 100]" in table
    assert title.startswith("agentdistill efficacy") and svgs >= 3  # success, cost frontier, the SFT loss curve
    from PIL import Image
    import io

    img = Image.open(io.BytesIO(png)).convert("L")
    colors = img.getcolors(maxcolors=1 << 20)
    assert img.size[0] >= 1000 and len(colors) > 50  # not blank: text, bars and lines in many shades


def test_ctrl_c_during_side_by_side_stages_raises_at_once_and_the_rest_stays_quiet(tmp_path):
    """Eval arms on a cluster run side by side in threads: Ctrl-C reaches the caller at once; an arm that
    still finishes afterwards keeps its stored result but prints nothing over the interruption's message."""
    import _thread
    import threading

    from agentdistill.pipeline.run import StageDef, _execute_together

    store = Store.open(str(tmp_path / "s.db"))
    run_id = store.create_run("p", {}, kind="pipeline")
    recipe = parse_recipe({"name": "p", "env": {"name": "textworld"}, "student": {"model": "local/smollm2-135m"}})
    started, interrupted, release = threading.Event(), threading.Event(), threading.Event()

    def ctrl_c(ctx):
        started.wait(10)  # both arms are under way (each has said so)
        interrupted.set()
        _thread.interrupt_main()  # what the terminal's Ctrl-C does to the main thread
        release.wait(10)
        raise RuntimeError("the cluster connection went away")

    def slow_arm(ctx):
        started.set()
        interrupted.wait(10)
        release.wait(10)
        return {"won": 1}

    said: list[str] = []
    stages = [(StageDef("eval.a", "eval", {}, [], ctrl_c), "ka"), (StageDef("eval.b", "eval", {}, [], slow_arm), "kb")]
    with pytest.raises(KeyboardInterrupt):
        _execute_together(store, run_id, stages, recipe, {}, {}, said.append)
    assert sorted(said) == ["eval.a: running", "eval.b: running"]  # said before the interruption
    release.set()
    for _ in range(100):  # the arms run out in their threads
        if {s.name: s.status for s in store.stages(run_id)} == {"eval.a": "error", "eval.b": "done"}:
            break
        time.sleep(0.1)
    assert {s.name: s.status for s in store.stages(run_id)} == {"eval.a": "error", "eval.b": "done"}
    assert sorted(said) == ["eval.a: running", "eval.b: running"]  # and nothing after it
    store.close()
