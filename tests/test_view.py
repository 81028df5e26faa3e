"""`agentdistill view` in real Chromium, over a store filled by real runs: a TextWorld pipeline (expert
teacher, an OpenAI-compatible stand-in as the student, a Trace2Skill pack, a BM25 ICD index, a cascade arm
that defers to the teacher, the efficacy report), a skill edited into a second version and A/B-evaluated,
and an episode whose observation is a <script>. The server is the CLI command, started as users start it."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from agentdistill.store.models import Dataset, Evaluation, Run
from agentdistill.store.store import StepRecord, Store
from tests.conftest import free_port, run_cli

pytest.importorskip("textworld", reason="pip install textworld")
pytest.importorskip("fastapi", reason="pip install 'agentdistill[view]'")
pytestmark = pytest.mark.browser

SCRIPT = "<script>document.title='pwned'</script>"
STUDENT_REPLY = f"Thought: {SCRIPT} look first\nAction: look"


def _pipeline(store: Store, workdir: Path, stub_url: str) -> str:
    from agentdistill.config import parse_recipe
    from agentdistill.pipeline.run import run_pipeline

    recipe = parse_recipe({
        "name": "viewtest", "workdir": str(workdir),
        "env": {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 2},
        "teacher": {"policy": "expert", "price": {"per_action": 0.003}},
        "student": {"policy": "llm", "model": "openai/stub", "api_base": stub_url + "/v1", "max_tokens": 32,
                    "history": 1, "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.1}},
        "runner": {"max_steps": 4, "concurrency": 2},
        "collect": {"variations": 3},
        "distill": [{"name": "t2s", "method": "skills"}, {"name": "icd", "method": "icd", "retrieval": "bm25"}],
        # threshold 1.0: the student's agreement never exceeds it, so every step defers to the teacher
        "eval": {"arm": [{"name": "cascade", "policy": "cascade", "icd": "icd", "n": 3, "threshold": 1.0}]},
        "report": {}})
    return run_pipeline(store, recipe, progress=False, say=lambda _: None)


def _spark(store: Store) -> str:
    """SPARK on a TextWorld game: a cascade whose student (the stand-in) says `look` until the memo of a failed
    attempt reaches its prompt, then says nothing admissible so the expert acts and wins: FAIL, then PASS."""
    from agentdistill.agents.rollout import build_policy
    from agentdistill.config import PolicySpec
    from agentdistill.envs import make
    from agentdistill.skills.spark import run_spark
    from agentdistill.testing import OpenAIStub

    def reply(body):
        noted = "Notes from your earlier attempts" in body["messages"][0]["content"]
        return "Action: ask the manual" if noted else "Action: look"

    env = make("textworld")
    task = env.tasks("train", ["easy"])[0]
    env.close()
    with OpenAIStub(reply=reply) as stub:
        spec = PolicySpec.model_validate({"policy": "cascade", "model": "openai/student", "api_base": stub.url,
                                          "max_retries": 0, "threshold": 0.0, "fallback": {"policy": "expert"}})
        run_id, (outcome,) = run_spark(store, build_policy(spec, store), "textworld", [task], max_attempts=3,
                                       max_steps=4)
    assert [a.status for a in outcome.attempts] == ["FAIL", "PASS"]
    return run_id


def _script_episode(store: Store) -> int:
    """An episode whose observation is markup, written through the store as the runner writes one."""
    run_id = store.create_run("hostile-observation", {"note": "an env page carrying markup"})
    task = store.task_id("textworld", "hostile", 0, "test", goal=f"goal {SCRIPT}")
    ep = store.start_episode(run_id, 0, task, role="student", policy_id="llm:openai/stub", model="openai/stub")
    store.add_step(ep, StepRecord(idx=0, observation=f"You see a page. {SCRIPT}<img src=x onerror=\"document.title='img'\">",
                                  action="look", answered_by="openai/stub",
                                  calls=[{"model": "openai/stub", "messages": [{"role": "user", "content": SCRIPT}],
                                          "params": {"n": 1}, "outputs": [SCRIPT], "prompt_tokens": 5}]))
    store.finish_episode(ep, success=False)
    store.set_run_status(run_id, "done")
    return ep


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    from agentdistill.skills import library
    from agentdistill.skills.evaluate import ab_evaluate
    from agentdistill.skills.pack import SkillPack
    from agentdistill.testing import OpenAIStub

    root = tmp_path_factory.mktemp("view")
    db = str(root / "store.db")
    store = Store.open(db)
    with OpenAIStub(reply=STUDENT_REPLY) as stub:
        pipeline = _pipeline(store, root / "work", stub.url)
        (skill,) = {v.name for v in library.versions(store)}
        v1 = library.get(store, skill)
        files = dict(v1.pack.files)
        files["SKILL.md"] = files["SKILL.md"].rstrip("\n") + "\n\nCheck the room with `look` before moving.\n"
        library.save(store, SkillPack(skill, files))
        student = {"policy": "llm", "model": "openai/stub", "api_base": stub.url + "/v1", "max_tokens": 32, "history": 1}
        ab = ab_evaluate(store, skill, student, {"name": "textworld", "split": "test", "tasks": ["easy"], "variations": 1},
                         {"max_steps": 3}, progress=False)
    spark_run = _spark(store)
    hostile = _script_episode(store)
    with store.session() as s:
        runs = {r.name: r.id for r in s.scalars(select(Run))}
        n_runs = len(s.scalars(select(Run.id)).all())
        efficacy = s.scalar(select(Evaluation.id).where(Evaluation.name.startswith("efficacy:")))
        dataset = s.scalar(select(Dataset.id).where(Dataset.kind == "icd_index"))
    cascade_run = runs["viewtest:cascade"]
    cascade_ep = store.episodes(run_id=cascade_run)[0].id
    spark_eps = [e.id for e in store.episodes(run_id=spark_run)]
    # the note OPD's trainer writes on each step it scored (train/opd.py), through the same store call
    store.annotate_steps(cascade_ep, {0: {"distill": {"iteration": 0, "method": "opd", "measure": "reverse_kl",
                                                      "per_token": 0.4321, "tokens": 7}}})
    store.close()
    return {"db": db, "pipeline": pipeline, "spark_eps": spark_eps, "opd_step": 0, "skill": skill,
            "ab": ab.evaluation_id, "efficacy": efficacy,
            "dataset": dataset, "hostile": hostile, "cascade_run": cascade_run, "cascade_ep": cascade_ep,
            "runs": runs, "n_runs": n_runs, "shots": root / "shots"}


def _serve(db: str):
    port = free_port()
    proc = subprocess.Popen(["agentdistill", "view", "--db", db, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"agentdistill view did not start: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def server(filled):
    proc, url = _serve(filled["db"])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                               "--disable-background-networking"])
        yield b
        b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    return page, response, errors


def _not_blank(png: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    assert img.size[0] >= 1000 and len(img.getcolors(maxcolors=1 << 20)) > 30  # text, tables, bars: many shades


def test_every_page_loads_on_a_store_filled_by_real_runs(filled, server, browser):
    f = filled
    pages = {
        "runs": ("/", "Runs"),
        "pipeline": (f"/runs/{f['pipeline']}", "Pipeline stages"),
        "arm-run": (f"/runs/{f['cascade_run']}", "Per role"),
        "episode": (f"/episodes/{f['cascade_ep']}", "Transcript"),
        "skills": ("/skills", f["skill"]),
        "skill": (f"/skills/{f['skill']}", "A/B results"),
        "diff": (f"/skills/{f['skill']}/diff?a=1&b=2", "v1 → v2"),
        "evaluations": ("/evaluations", "Evaluations"),
        "efficacy": (f"/evaluations/{f['efficacy']}", "Success per arm"),
        "ab": (f"/evaluations/{f['ab']}", "valid_actions"),
        "checkpoints": ("/checkpoints", "Checkpoints"),
        "datasets": ("/datasets", "icd_index"),
        "dataset": (f"/datasets/{f['dataset']}", "Episodes it came from"),
    }
    f["shots"].mkdir(exist_ok=True)
    for name, (path, expected) in pages.items():
        page, response, errors = _open(browser, server + path)
        assert response.status == 200, (name, response.status)
        body = page.inner_text("body")
        assert expected in body, (name, body[:500])
        assert not errors, (name, errors)
        png = page.screenshot(full_page=True, path=str(f["shots"] / f"{name}.png"))
        _not_blank(png)
        page.close()
    # the pipeline page: every stage with what it produced, arms with their efficiency
    page, _, _ = _open(browser, server + f"/runs/{f['pipeline']}")
    stages = page.inner_text("#stages")
    for stage in ("collect", "distill.t2s", "distill.icd", "eval.base", "eval.cascade", "eval.teacher", "report"):
        assert stage in stages
    assert f"evaluation {f['efficacy']}" in stages
    arms = page.inner_text("#arms")
    assert "cascade" in arms and "75%" in arms  # the stub repeats "look": 3 of its 4 actions are repeats
    page.close()
    # efficacy: the table with the efficiency columns and the SVG plots
    page, _, _ = _open(browser, server + f"/evaluations/{f['efficacy']}")
    table = page.inner_text("#efficacy")
    assert "repeat" in table and "overhead" in table and "unknown" in table
    assert page.locator("svg").count() >= 2
    page.close()


def test_episode_transcript_shows_observations_actions_and_model_calls(filled, server, browser):
    store = Store.open(filled["db"], create=False)
    (ep,) = store.episodes(ids=[filled["cascade_ep"]], with_steps=True)
    store.close()
    page, response, _ = _open(browser, server + f"/episodes/{ep.id}")
    assert response.status == 200
    steps = page.locator("section.step")
    assert steps.count() == len(ep.steps) >= 2
    for i, st in enumerate(ep.steps):
        section = steps.nth(i)
        assert section.locator("pre.observation").inner_text().strip() == st.observation.strip()
        assert section.locator("pre.action").inner_text().strip() == st.action
        # the cascade deferred every step to the teacher: who answered, the student's samples, the demos
        assert "teacher" in section.locator("h3 .badge").inner_text()
        assert "deferred to the teacher" in section.inner_text()
        demos = section.locator(".demos a")
        assert demos.count() == len(st.info["demos"]) >= 1
        assert demos.first.get_attribute("href") == f"/episodes/{st.info['demos'][0][0]}#step-{st.info['demos'][0][1]}"
        # the model calls (the student's 3 samples, then the expert teacher's answer): messages and every sample
        assert [c.model for c in st.calls] == ["openai/stub", "expert"]
        calls = section.locator(".call")
        assert calls.count() == 2
        call, shown = st.calls[0], calls.first
        samples = shown.locator("pre.sample")
        assert samples.count() == len(call.outputs) == 3
        assert samples.first.text_content().strip() == call.outputs[0].strip()
        assert call.messages[-1]["content"].strip() == shown.locator("pre.message").last.text_content().strip()
        assert f"{call.prompt_tokens} prompt / {call.completion_tokens} completion tokens" in shown.text_content()
        assert st.calls[1].outputs[0].strip() in calls.nth(1).locator("pre.sample").text_content()
    png = page.screenshot(full_page=True, path=str(filled["shots"] / "episode-transcript.png"))
    _not_blank(png)
    # a retrieved demo links to the teacher episode it came from, which loads
    page.locator(".demos a").first.click()
    page.wait_for_load_state()
    assert "Transcript" in page.inner_text("body") and "/episodes/" in page.url
    page.close()


def test_spark_memo_pdi_and_opd_divergence_are_shown(filled, server, browser):
    failed, passed = filled["spark_eps"]
    page, response, _ = _open(browser, server + f"/episodes/{failed}")
    assert response.status == 200
    assert "attempt 0: FAIL" in page.inner_text("#spark")
    memo = page.locator("#spark pre").inner_text()
    assert "### Commands" in memo and "- look" in memo and "step limit reached" in memo
    pdi = page.inner_text("#pdi")
    assert "weighted_pdi" in pdi and "triggered" in pdi
    page.close()
    page, _, _ = _open(browser, server + f"/episodes/{passed}")
    assert "attempt 1: PASS" in page.inner_text("#spark")
    page.close()
    page, _, _ = _open(browser, server + f"/episodes/{filled['cascade_ep']}")
    note = page.locator(f"#step-{filled['opd_step']} .divergence").inner_text()
    assert "opd per-turn divergence" in note and "reverse_kl 0.4321 per token over 7 tokens (iteration 0)" in note
    page.close()


def test_a_filter_narrows_the_runs_list(filled, server, browser):
    page, _, _ = _open(browser, server + "/")
    all_rows = page.locator("tr.run-row").count()
    assert all_rows == filled["n_runs"]
    page.select_option("select[name=kind]", "pipeline")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "kind=pipeline" in page.url
    rows = page.locator("tr.run-row")
    assert rows.count() == 1 and filled["pipeline"] in rows.first.inner_text()
    # model filter: only runs with an episode whose model id contains "stub"
    page.goto(server + "/?model=stub")
    stub_runs = page.locator("tr.run-row").count()
    assert 0 < stub_runs < all_rows
    assert "viewtest:teacher" not in page.inner_text("#runs")
    page.close()


def test_a_skill_diff_shows_the_changed_lines(filled, server, browser):
    page, _, _ = _open(browser, server + f"/skills/{filled['skill']}")
    page.select_option("select[name=a]", "1")
    page.select_option("select[name=b]", "2")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    added = page.locator("#diff .add").all_inner_texts()
    assert "+Check the room with `look` before moving." in added
    assert not page.locator("#diff .del").count() or all(t.startswith("-") for t in page.locator("#diff .del").all_inner_texts())
    assert f"{filled['skill']}@v2/SKILL.md" in page.inner_text("#diff")
    page.close()
    # the skill page: both versions, the producing run, the A/B evaluation
    page, _, _ = _open(browser, server + f"/skills/{filled['skill']}")
    versions = page.inner_text("#versions")
    assert "v1" in versions and "v2" in versions and "trace2skill" in versions
    assert "ab:" in page.inner_text("#ab")
    page.close()


def test_a_script_in_an_observation_is_inert(filled, server, browser):
    page, response, errors = _open(browser, server + f"/episodes/{filled['hostile']}")
    assert response.status == 200
    assert page.title().startswith("episode") and "pwned" not in page.title() and page.title() != "img"
    assert SCRIPT in page.locator("pre.observation").inner_text()  # shown as text
    assert page.locator("main script").count() == 0 and page.locator("main img").count() == 0
    assert SCRIPT in page.locator("pre.message").first.inner_text() and SCRIPT in page.locator("pre.sample").inner_text()
    assert not errors
    _not_blank(page.screenshot(full_page=True))
    page.close()
    # the stub's thought carries the same script on every student step of the pipeline: inert there too
    page, _, _ = _open(browser, server + f"/runs/{filled['runs']['viewtest:base']}")
    page.locator("#episodes a").first.click()
    page.wait_for_load_state()
    assert SCRIPT in page.locator("pre.thought").first.inner_text() and "pwned" not in page.title()
    page.close()


def test_missing_ids_are_a_404_page_and_bad_input_one_line(filled, server, browser):
    for path, message in (("/episodes/999999", "no episode 999999 in this store"),
                          ("/runs/doesnotexist", "no run 'doesnotexist' in this store"),
                          ("/episodes/abc", "no episode 'abc' in this store"),
                          ("/skills/nope", "no skill 'nope' in this store"),
                          ("/checkpoints/42", "no checkpoint 42 in this store"),
                          ("/nowhere", "no page at /nowhere")):
        page, response, _ = _open(browser, server + path)
        assert response.status == 404, path
        assert page.inner_text("#message") == message
        page.close()
    # the CLI: one line each, no traceback, nothing created
    missing = Path(filled["db"]).with_name("missing.db")
    for args, fragment in ((["--db", str(missing)], "no store at"),
                           (["--db", "notadialect://x/y"], "bad database URL"),
                           (["--db", filled["db"], "--port", "70000"], "--port 70000"),
                           (["--db", filled["db"], "--port", "http"], "--port http: use a port number"),
                           (["--db", filled["db"], "--port", server.rsplit(":", 1)[1]], "cannot listen on"),
                           (["--db", filled["db"], "--host", "0.0.0.0"], "--expose")):
        r = run_cli("view", *args, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert fragment in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not missing.exists()


def test_secrets_in_the_store_are_never_shown(filled, tmp_path, browser, monkeypatch):
    """A key that reached the store before it was known as a secret is redacted on the page."""
    db = tmp_path / "s.db"
    store = Store.open(str(db))
    key = "sk-viewtest-0123456789abcdefghij"
    with store.engine.begin() as conn:  # written around the store's own redaction, as an old row might be
        conn.exec_driver_sql("INSERT INTO runs (id, name, kind, status, recipe, created_at) VALUES "
                             f"('r1', 'leaky', 'rollout', 'done', '{{\"api_key\": \"{key}\"}}', '2026-01-01 00:00:00')")
    store.close()
    proc, url = _serve(str(db))
    try:
        page, response, _ = _open(browser, url + "/runs/r1")
        html = page.content()
        assert response.status == 200 and key not in html and "sk-view***" in html
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_checkpoint_page_shows_its_training_curve(filled, tmp_path, browser):
    """A real LoRA SFT of SmolLM2 (3 optimizer steps on the pipeline's teacher episodes) and its page."""
    pytest.importorskip("trl", reason="pip install 'agentdistill[train]'")
    db = tmp_path / "store.db"
    shutil.copy(filled["db"], db)
    r = run_cli("train", "sft", str(tmp_path / "ckpt"), "--env", "textworld", "--split", "train", "--max-steps", "3",
                "--batch-size", "2", "--max-length", "512", "--device", "cpu", "--db", str(db))
    assert r.returncode == 0, r.stderr
    proc, url = _serve(str(db))
    try:
        page, response, _ = _open(browser, url + "/checkpoints")
        assert response.status == 200 and "sft" in page.inner_text("#checkpoints")
        page.locator("#checkpoints a").first.click()
        page.wait_for_load_state()
        assert page.locator("#curve svg polyline").count() == 1  # the loss per optimizer step
        assert "local/smollm2-135m" in page.inner_text("h1")
        page.locator("a[href^='/datasets/']").first.click()
        page.wait_for_load_state()
        assert page.locator("#episodes a[href^='/episodes/']").count() >= 1  # the episodes it was trained on
        _not_blank(page.screenshot(full_page=True))
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_lists_are_paged_in_sql_and_a_running_run_refreshes_itself(tmp_path):
    """61 runs: 50 on the first page with a link to the next, 11 on the second; a running run's pages reload."""
    from fastapi.testclient import TestClient

    from agentdistill.view.app import create_app

    store = Store.open(str(tmp_path / "p.db"))
    ids = [store.create_run(f"r{i}", {}) for i in range(61)]
    for run_id in ids[1:]:
        store.set_run_status(run_id, "done")
    client = TestClient(create_app(store))
    first = client.get("/?status=done").text
    assert first.count('class="run-row"') == 50 and "next &rarr;" in first and "previous" not in first
    assert 'http-equiv="refresh"' not in first  # nothing running on this page
    second = client.get("/?status=done&p=2").text
    assert second.count('class="run-row"') == 10 and "previous" in second and "next &rarr;" not in second
    assert 'href="?status=done&amp;p=1"' in second  # the filter is kept across pages
    running = client.get(f"/runs/{ids[0]}")
    assert running.status_code == 200 and '<meta http-equiv="refresh" content="3">' in running.text
    assert "default-src 'none'" in running.headers["content-security-policy"]  # no script may run, ours included
    store.close()
