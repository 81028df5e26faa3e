"""Recipes and model ids: bad input gets one line naming the field and the fix, and writes nothing."""


import pytest

from agentdistill.config import load_recipe, parse_recipe
from agentdistill.errors import ConfigError
from tests.conftest import run_cli


def test_default_recipe_is_valid():
    r = load_recipe()
    assert r.teacher.policy == "expert" and r.student.model == "local/smollm2-135m" and r.env.split == "test"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"student": {"policy": "llm", "temperature": 5, "model": "local/smollm2-135m"}}, "student.temperature"),
        ({"student": {"policy": "llm"}}, "needs a model"),
        ({"student": {"model": "nonsense-model"}}, "unknown model id 'nonsense-model'"),
        ({"student": {"model": "local/no/such/dir"}}, "unknown local model"),
        ({"teacher": {"policy": "expert", "model": "openai/gpt-4.1"}}, "remove model"),
        ({"teacher": {"policy": "expert"}, "env": {"name": "nethack"}}, "unknown environment 'nethack'"),
        ({"teacher": {"policy": "expert"}, "runner": {"concurency": 3}}, "runner.concurency: unknown field"),
        ({"env": {"name": "scienceworld"}}, "needs a [teacher] or a [student]"),
        ({"student": {"policy": "cascade", "model": "local/smollm2-135m"}}, "needs a fallback teacher"),
        ({"student": {"model": "local/smollm2-135m", "fallback": {"policy": "expert"}}}, "only for policy \"cascade\""),
        ({"teacher": {"policy": "expert", "icd": {"k": 2}}}, "icd is for llm and cascade"),
        ({"student": {"policy": "cascade", "model": "local/smollm2-135m", "threshold": 1.5,
                      "fallback": {"policy": "expert"}}}, "student.threshold"),
        ({"student": {"model": "local/smollm2-135m", "icd": {"unit": "paragraph"}}}, "student.icd.unit"),
    ],
)
def test_bad_recipe_one_line(data, fragment):
    with pytest.raises(ConfigError) as e:
        parse_recipe(data, "r.toml")
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("r.toml")


def test_cli_bad_recipe_exits_2_with_one_line_and_writes_nothing(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[student]\nmodel = "local/smollm2-135m"\ntemperature = "hot"\n')
    db = tmp_path / "s.db"
    p = run_cli("run", str(recipe), "--db", str(db))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "student.temperature" in lines[0], p.stderr
    assert not db.exists()


def test_cli_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "x.toml").write_text("[student\nmodel=")
    p = run_cli("run", str(tmp_path / "x.toml"), "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "not valid TOML" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("run", str(tmp_path / "nope.toml"), "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "not found" in p.stderr


def test_cli_bad_model_id(tmp_path):
    p = run_cli("collect", "--policy", "gpt-nonexistent-provider/x", "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "unknown model id" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_envs_check_reports_scienceworld():
    p = run_cli("envs", "check")
    assert p.returncode == 0 and "scienceworld" in p.stdout and "Java" in p.stdout
