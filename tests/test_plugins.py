"""Plugins: a user's environments, policies and distillers, without editing the package.

The example package (examples/agentdistill-plugin-example) is built and installed into a throwaway directory,
not into the venv, and put on PYTHONPATH: `agentdistill` finds its entry points through importlib.metadata as
it would find an installed package's. The same plugins named as "package.module:Class" need no entry point.
Every way they are used is exercised: a whole pipeline (collect from the plugin env's expert, the plugin
distiller, a plugin policy as an eval arm), `--resume` of a crashed rollout (the plugins re-resolved from the
stored recipe), a run on the Ray executor (the actors resolve them too), and bad names (one line each)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentdistill.config import parse_recipe
from agentdistill.errors import ConfigError
from agentdistill.store.store import Store
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "agentdistill-plugin-example"
COUNTER = "agentdistill_plugin_example.counter:CounterEnv"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package built from a copy of its sources (the clone stays clean) into its own directory."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--target", str(root / "site"), str(root / "src")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((root / "site").glob("agentdistill_plugin_example-*.dist-info/entry_points.txt"))
    return root / "site"


def _path(*dirs: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([*(str(d) for d in dirs), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture
def bad_plugins(tmp_path, monkeypatch) -> Path:
    """A module of plugins that are wrong in every way a name can be, and one that fails to import."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "bad_plugins.py").write_text(textwrap.dedent('''
        from agentdistill.distill.base import Distilled, Distiller
        from agentdistill.envs import Env

        class NotAnEnv:
            pass

        class HalfEnv(Env):
            def tasks(self, split, names=None):
                return []

        class NoProduct(Distiller):
            def distill(self, ctx):
                return Distilled()

        class Boom(Distiller):
            produces = "policy"

            def distill(self, ctx):
                raise ValueError("kaboom\\nand a second line")
    '''))
    (mods / "broken_plugin.py").write_text('raise RuntimeError("boom at import\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(mods))
    return mods


def _store(db: Path) -> Store:
    return Store.open(str(db), create=False)


def test_env_base_class_matches_what_the_runner_calls(site, monkeypatch):
    from agentdistill.envs import Env, make, names
    from agentdistill.envs.registry import _REGISTRY, env_class

    assert list(inspect.signature(Env.tasks).parameters) == ["self", "split", "names"]
    assert inspect.signature(Env.tasks).parameters["names"].default is None
    assert set(Env.__abstractmethods__) == {"tasks", "reset", "step"}  # requirements: none by default
    for name in _REGISTRY:  # every built-in adapter takes what the runner passes
        try:
            cls = env_class(name)
        except ConfigError:  # its optional package is not installed here
            continue
        assert list(inspect.signature(cls.tasks).parameters)[:3] == ["self", "split", "names"], name
        assert not inspect.isabstract(cls), name
    monkeypatch.syspath_prepend(str(site))
    assert "counter" in names()  # an entry point, listed after the built-ins
    for name in ("counter", COUNTER):  # the tasks it lists carry the name it was made by
        env = make(name, start=3)
        try:
            tasks = env.tasks("dev", ["down"])
            assert [t.env for t in tasks] == [name] * 5 and env_class(tasks[0].env) is type(env)
            obs = env.reset(tasks[0])
            assert obs.text == "Counter: 3. Target: 0." and env.expert_action() == "dec"
        finally:
            env.close()


def test_entry_point_plugins_run_a_whole_pipeline_and_resume_from_the_stored_recipe(site, tmp_path):
    env = _path(site)
    p = run_cli("envs", "check", "counter", env=env, timeout=300)
    assert p.returncode == 0 and "counter: ready" in p.stdout, p.stdout + p.stderr
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((EXAMPLE / "recipe.toml").read_text().replace('workdir = ".agentdistill"',
                                                                     f'workdir = "{tmp_path / "work"}"'))
    db = tmp_path / "s.db"
    p = run_cli("run", str(recipe), "--db", str(db), "--no-progress", env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    store = _store(db)
    (pipeline,) = [r["run"] for r in store.list_runs() if r["run"].kind == "pipeline"]
    assert pipeline.status == "done"
    stages = {st.name: st for st in store.stages(pipeline.id)}
    assert set(stages) == {"collect", "distill.rules", "eval.rules", "eval.repeat", "eval.teacher", "report"}
    # the plugin env's expert played the training tasks: 2 tasks x 5 variations, stored under the env's name
    teacher = store.episodes(ids=stages["collect"].outputs["episode_ids"], with_steps=True)
    assert len(teacher) == 10 and all(e.success and e.task.env == "counter" and e.task.split == "train"
                                      for e in teacher)
    # the plugin distiller's policy, recorded with its outputs, played the held-out tasks
    rules = stages["distill.rules"].outputs
    assert rules["policy"] == {"policy": "agentdistill_plugin_example.policies:RulePolicy",
                               "options": {"rules": {"below": "inc", "at": "submit", "above": "dec"}}}
    assert all(Path(f).exists() for f in rules["paths"])
    won = {arm: [e.success for e in store.episodes(run_id=stages[f"eval.{arm}"].outputs["run_id"])]
           for arm in ("rules", "repeat", "teacher")}
    assert won["rules"] == [True] * 6 and won["teacher"] == [True] * 6 and won["repeat"] == [False] * 6
    policies = {e.policy_id for e in store.episodes(run_id=stages["eval.repeat"].outputs["run_id"])}
    assert policies == {"repeat:inc"}
    assert all(e.task.split == "test" for e in store.episodes(run_id=stages["eval.rules"].outputs["run_id"]))
    store.close()

    # --resume reads the recipe stored with the run: the same plugins resolve again, every stage is reused
    p = run_cli("run", "--resume", pipeline.id, "--db", str(db), "--no-progress", env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("unchanged, reused") == 6, p.stdout
    # ... and where the plugin package is missing, one line says which name did not resolve and how to fix it
    p = run_cli("run", "--resume", pipeline.id, "--db", str(db), "--no-progress", timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"recipe stored with run {pipeline.id}: env.name: unknown environment 'counter'" in lines[0]
    assert '"package.module:Class"' in lines[0]


def test_plugins_by_module_path_and_resume_after_a_crash(site, tmp_path):
    """A rollout whose env and both policies are named as "package.module:Class": its process dies mid-run (as
    if killed); `--resume` re-resolves them from the stored recipe and finishes the plan, nothing duplicated."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "dieonce.py").write_text(textwrap.dedent('''
        import os
        from pathlib import Path

        from agentdistill.agents.policies import Decision, Policy


        class DieOncePolicy(Policy):
            """The env's expert, except that its process dies at its `after`-th action while `marker` is absent."""

            id = "die-once"

            def __init__(self, marker: str, after: int = 5):
                self.marker, self.after, self.acted = Path(marker), after, 0

            async def act(self, ctx):
                self.acted += 1
                if self.acted >= self.after and not self.marker.exists():
                    self.marker.write_text("died here")
                    os._exit(9)
                return Decision(action=ctx.env.expert_action(), answered_by=self.id)
    '''))
    marker = tmp_path / "died"
    recipe = tmp_path / "by-path.toml"
    recipe.write_text(textwrap.dedent(f'''
        name = "by-path"
        [env]
        name = "{COUNTER}"
        split = "train"
        variations = 4
        options = {{ start = 10 }}
        [teacher]
        policy = "dieonce:DieOncePolicy"
        options = {{ marker = "{marker}", after = 7 }}
        [student]
        policy = "agentdistill_plugin_example.policies:RepeatPolicy"
        options = {{ action = "dec" }}
        [runner]
        concurrency = 2
        max_steps = 6
    '''))
    db = tmp_path / "s.db"
    env = _path(site, mods)
    p = run_cli("run", str(recipe), "--db", str(db), "--no-progress", env=env, timeout=300)
    assert p.returncode == 9 and marker.exists(), p.stdout[-2000:] + p.stderr[-2000:]
    store = _store(db)
    (run,) = [r["run"] for r in store.list_runs() if r["run"].name == "by-path"]
    assert run.status == "running" and len(store.episodes(run_id=run.id)) < 16
    store.close()

    p = run_cli("run", "--resume", run.id, "--db", str(db), "--no-progress", env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    store = _store(db)
    assert store.get_run(run.id).status == "done"
    eps = store.episodes(run_id=run.id, with_steps=True)
    every = store.episodes(run_id=run.id, attempts="all")
    assert sorted(e.plan_index for e in eps) == list(range(16)) and len(every) == 16  # 2 roles x 2 tasks x 4
    assert all(e.status == "done" and e.task.env == COUNTER for e in eps)
    teacher = [e for e in eps if e.role == "teacher"]
    student = [e for e in eps if e.role == "student"]
    assert all(e.success and e.policy_id == "die-once" for e in teacher)
    # "dec" forever never submits: every student episode runs to the step limit and loses
    assert all(not e.success and e.n_steps == 6 and e.policy_id == "repeat:dec" for e in student)
    store.close()


def test_distillers_producing_a_checkpoint_and_a_skill_pack_feed_later_stages_and_arms(site, tmp_path, monkeypatch):
    """The other two products of the distiller protocol, in process: a checkpoint (recorded in the store; a later
    stage starts from it with `init`; an arm may play it) and a skill pack (saved as a library version)."""
    from agentdistill.pipeline import run_pipeline
    from agentdistill.pipeline.evaluate import arm_definition
    from agentdistill.store.models import Checkpoint

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "products.py").write_text(textwrap.dedent('''
        import json

        from agentdistill.distill.base import Distilled, Distiller
        from agentdistill.skills.pack import SkillPack


        class Weights(Distiller):
            produces = "checkpoint"

            def distill(self, ctx):
                out = ctx.workdir / "weights"
                out.mkdir()
                (out / "config.json").write_text(json.dumps({"start": ctx.start_model}))
                return Distilled(model=f"local/{out}", metrics={"start": ctx.start_model,
                                                                "teacher_episodes": len(ctx.episodes())})


        class Tips(Distiller):
            produces = "skill"

            def __init__(self, tip: str):
                self.tip = tip

            def distill(self, ctx):
                return Distilled(skill=SkillPack.new("counter-tips", "How to reach a counter's target.", self.tip))
    '''))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(mods))
    recipe = parse_recipe({
        "name": "products", "workdir": str(tmp_path / "work"), "env": {"name": COUNTER, "variations": 1},
        "teacher": {"policy": "expert"}, "student": {"model": "local/smollm2-135m"},
        "runner": {"concurrency": 2, "max_steps": 8}, "collect": {"variations": 2},
        "distill": [{"name": "w1", "method": "products:Weights"},
                    {"name": "w2", "method": "products:Weights", "init": "w1"},
                    {"name": "tips", "method": "products:Tips",
                     "options": {"tip": "Inc below, dec above, submit at."}}],
        "eval": {"arms": ["teacher"], "arm": [{"name": "w2-tips", "model": "w2", "skills": ["tips"]}]},
    })
    assert arm_definition(recipe, "w1").model == "w1" and arm_definition(recipe, "tips").skills == ["tips"]
    store = Store.open(str(tmp_path / "s.db"))
    run_id = run_pipeline(store, recipe, progress=False, say=lambda line: None)
    out = {st.name: st.outputs for st in store.stages(run_id)}
    w1, w2, tips = out["distill.w1"], out["distill.w2"], out["distill.tips"]
    assert w1["metrics"] == {"start": "local/smollm2-135m", "teacher_episodes": 4}
    assert w2["metrics"]["start"] == w1["model"] and Path(w2["path"]).is_dir()  # `init` continued w1's checkpoint
    with store.session() as s:
        row = s.get(Checkpoint, w2["checkpoint_id"])
        assert (row.method, row.base_model, row.path) == ("products:Weights", w1["model"], w2["path"])
    from agentdistill.skills import library

    version = library.get(store, tips["skill"], tips["version"])
    assert version.id == tips["skill_version_id"] and "Inc below" in version.pack.body
    # an unchanged re-run reuses all three while their files are there
    lines: list[str] = []
    run_pipeline(store, recipe, progress=False, say=lines.append)
    assert sum("unchanged, reused" in line for line in lines) == 6, lines
    store.close()


@pytest.mark.ray
def test_ray_env_actors_resolve_the_plugins_themselves(site, tmp_path):
    """executor = "ray" on a local cluster this run starts (a SQLite store is fine on one machine): each env actor
    parses the recipe and makes the plugin env and policies in its own process, from their entry points."""
    pytest.importorskip("ray", reason="Ray not installed: pip install 'agentdistill[ray]'")
    recipe = tmp_path / "ray.toml"
    recipe.write_text(textwrap.dedent('''
        name = "ray-plugins"
        [env]
        name = "counter"
        split = "train"
        variations = 2
        [teacher]
        policy = "expert"
        [student]
        policy = "repeat"
        options = { action = "inc" }
        [runner]
        concurrency = 2
        max_steps = 6
        executor = "ray"
        cpus_per_episode = 0.5
    '''))
    db = tmp_path / "s.db"
    env = {**_path(site), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    p = run_cli("run", str(recipe), "--db", str(db), "--no-progress", env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    store = _store(db)
    eps = store.episodes(with_calls=False)
    assert len(eps) == 8 and all(e.status == "done" and e.task.env == "counter" for e in eps)
    assert all(e.success for e in eps if e.role == "teacher") and {e.policy_id for e in eps} == {"expert", "repeat:inc"}
    # every episode was played by an env actor (only an actor records where it ran)
    assert all(isinstance(e.metrics["ray"]["pid"], int) and e.metrics["ray"]["node"] for e in eps)
    store.close()


@pytest.mark.parametrize("data, fragment", [
    ({"env": {"name": "nethack"}}, "env.name: unknown environment 'nethack': choose one of alfworld"),
    ({"env": {"name": "no_such_pkg.envs:CounterEnv"}}, "no module named 'no_such_pkg': install the package"),
    ({"env": {"name": "broken_plugin:Env"}}, "module 'broken_plugin' failed to import (RuntimeError: boom at import)"),
    ({"env": {"name": "bad_plugins:NotAnEnv"}}, "bad_plugins:NotAnEnv is not a subclass of agentdistill.envs.base.Env"),
    ({"env": {"name": "bad_plugins:Missing"}}, "module 'bad_plugins' has no 'Missing': check the class name"),
    ({"env": {"name": "bad_plugins:HalfEnv"}}, "leaves abstract methods unimplemented (reset, step)"),
    ({"env": {"name": "bad_plugins:"}}, 'name a plugin as "package.module:Class"'),
    ({"teacher": {"policy": "bad_plugins:NotAnEnv"}}, "teacher.policy: policy 'bad_plugins:NotAnEnv': "
                                                      "bad_plugins:NotAnEnv is not a subclass of "
                                                      "agentdistill.agents.policies.Policy"),
    ({"teacher": {"policy": "expret"}}, "teacher.policy: unknown policy 'expret': choose one of cascade, expert, "
                                        "llm, repeat, rules or name a plugin"),
    ({"teacher": {"policy": "repeat", "options": {"acton": "inc"}}}, "RepeatPolicy does not take these options "
                                                                     "(got an unexpected keyword argument 'acton'): "
                                                                     "it takes action"),
    ({"teacher": {"policy": "repeat", "model": "local/smollm2-135m"}}, "a plugin policy gets what it needs from "
                                                                       "options"),
    ({"teacher": {"policy": "expert", "options": {"action": "inc"}}}, "options are for plugin policies"),
])
def test_a_bad_plugin_name_is_one_line_naming_the_problem_and_the_fix(site, bad_plugins, monkeypatch, data, fragment):
    monkeypatch.syspath_prepend(str(site))
    recipe = {"env": {"name": "counter"}, "teacher": {"policy": "expert"}, **data}
    with pytest.raises(ConfigError) as e:
        parse_recipe(recipe, "r.toml")
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("r.toml: "), msg


@pytest.mark.parametrize("stage, fragment", [
    ({"method": "distil"}, "distill.0.method: unknown distill method 'distil': choose one of dagger, icd, opd, sft, "
                           "skill_sd, skills, soda, rules or name a plugin"),
    ({"method": "bad_plugins:NoProduct"}, "NoProduct.produces must be one of 'checkpoint', 'skill', 'policy'"),
    ({"method": "bad_plugins:NotAnEnv"}, "is not a subclass of agentdistill.distill.base.Distiller"),
    ({"method": "rules", "options": {"min": 2}}, "RuleDistiller does not take these options"),
    ({"method": "rules", "epochs": 2}, "distill.0.epochs: unknown field"),
    ({"method": "rules", "init": "nope"}, "distill.0.init: 'nope' is not an earlier training stage"),
])
def test_a_bad_distill_plugin_is_one_line(site, bad_plugins, monkeypatch, stage, fragment):
    monkeypatch.syspath_prepend(str(site))
    recipe = {"env": {"name": "counter"}, "teacher": {"policy": "expert"}, "student": {"model": "local/smollm2-135m"},
              "collect": {}, "distill": [{"name": "x", **stage}]}
    with pytest.raises(ConfigError) as e:
        parse_recipe(recipe, "r.toml")
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_plugin_eval_arm_and_teacher_are_checked_against_what_they_cannot_do(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    base = {"env": {"name": "counter"}, "student": {"model": "local/smollm2-135m"}, "collect": {}}
    cases = [
        ({**base, "teacher": {"policy": "expert"}, "eval": {"arm": [{"name": "r", "policy": "repeat", "n": 3}]}},
         "eval.arm.0: n: for llm and cascade arms"),
        ({**base, "teacher": {"policy": "expert"}, "eval": {"arm": [{"name": "r", "policy": "nope"}]}},
         "eval.arm.0.policy: unknown policy 'nope'"),
        ({**base, "teacher": {"policy": "repeat"}, "distill": [{"name": "d", "method": "dagger"}]},
         "distill.0.teacher: a plugin teacher (repeat) cannot label states"),
        ({**base, "teacher": {"policy": "expert"}, "distill": [{"name": "r", "method": "rules"}],
          "eval": {"arm": [{"name": "c", "policy": "cascade", "model": "r"}]}},
         "eval.arm.0.model: 'r' is not a training stage"),
    ]
    for data, fragment in cases:
        with pytest.raises(ConfigError) as e:
            parse_recipe(data, "r.toml")
        assert fragment in str(e.value) and "\n" not in str(e.value), (fragment, str(e.value))


def test_the_cli_says_one_line_for_a_bad_plugin_and_for_a_plugin_that_fails(site, bad_plugins, tmp_path):
    env = _path(site, bad_plugins)
    db = tmp_path / "s.db"
    bad = tmp_path / "bad.toml"
    bad.write_text('[env]\nname = "bad_plugins:NotAnEnv"\n[teacher]\npolicy = "expert"\n')
    p = run_cli("run", str(bad), "--db", str(db), env=env, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "env.name: environment 'bad_plugins:NotAnEnv': bad_plugins:NotAnEnv is not a subclass" in lines[0]
    assert not db.exists()  # nothing written
    failing = tmp_path / "failing.toml"
    failing.write_text(textwrap.dedent(f'''
        workdir = "{tmp_path / "work"}"
        [env]
        name = "counter"
        [teacher]
        policy = "expert"
        [student]
        model = "local/smollm2-135m"
        [collect]
        variations = 1
        [[distill]]
        name = "boom"
        method = "bad_plugins:Boom"
    '''))
    p = run_cli("run", str(failing), "--db", str(db), "--no-progress", env=env, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert ("distill.boom: the plugin distiller 'bad_plugins:Boom' failed (ValueError: kaboom): fix it and run "
            "again, or --resume") in lines[0]
    store = _store(db)
    (st,) = [s for r in store.list_runs() for s in store.stages(r["run"].id) if s.name == "distill.boom"]
    assert st.status == "error" and "kaboom" in st.error
    store.close()
