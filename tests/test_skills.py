"""Skill packs: format and validation (skills-ref), edit operations, patch merging, the versioned
library in the store, and installs into agent hosts' directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.skills.edits import Op, apply_op, apply_patch, merge_patches, parse_patch
from agentdistill.skills.pack import SKILL_MD, SkillPack

BODY = """# Measure the temperature of a substance

## When to use
Tasks that ask for the temperature of an object.

## Steps
1. Find a thermometer (kitchen).
2. `pick up thermometer`
3. `use thermometer on <substance>`

## Pitfalls
- Focusing on the wrong object ends the task.
"""


def pack() -> SkillPack:
    return SkillPack.new("measure-temperature", "Measure a substance's temperature in ScienceWorld.", BODY,
                         {"distiller": "manual"})


def body(p: SkillPack) -> str:
    return p.body + "\n"


# ---- format ---------------------------------------------------------------------------------------
def test_pack_validates_with_skills_ref_and_round_trips(tmp_path):
    p = pack()
    assert p.validate() == []
    written = p.write(tmp_path / p.name)
    from skills_ref import validate

    assert validate(written) == []
    again = SkillPack.load(written)
    assert again.files == p.files and again.sha256 == p.sha256 and again.metadata == {"distiller": "manual"}
    assert "Steps" in again.as_prompt()


@pytest.mark.parametrize("name", ["../evil", "/etc/x", "a/b", "Upper", "-x", "a--b", "", "x" * 65, ".."])
def test_bad_names_are_refused(name):
    with pytest.raises(ConfigError, match="invalid skill name"):
        SkillPack.new(name, "d", "b")


def test_invalid_packs_are_reported():
    bad = SkillPack("ok-name", {SKILL_MD: "---\nname: other-name\ndescription: x\n---\nbody\n"})
    assert any("must match skill name" in e for e in bad.validate())
    escape = SkillPack("ok-name", {**pack().files, "../x.md": "y"})
    assert any("invalid file path" in e for e in escape.validate())
    with pytest.raises(ConfigError):
        escape.write(Path("/tmp") / "never")


# ---- edit operations on a real SKILL.md -----------------------------------------------------------
CASES = [
    ({"op": "insert_after", "anchor": "2. `pick up thermometer`", "text": "   (hold it before using it)"},
     lambda b: "`pick up thermometer`\n   (hold it before using it)\n3." in b),
    ({"op": "insert_before", "anchor": "1. Find a thermometer", "text": "0. Look around first."},
     lambda b: "## Steps\n0. Look around first.\n1. Find" in b),
    ({"op": "append_to_section", "section": "pitfalls", "text": "- Do not wait while holding ice."},
     lambda b: "ends the task.\n- Do not wait while holding ice.\n" in b),
    ({"op": "replace_in_section", "section": "Steps", "old": "(kitchen)", "new": "(kitchen or workshop)"},
     lambda b: "1. Find a thermometer (kitchen or workshop)." in b),
    ({"op": "add_section", "section": "Verification", "text": "Read the value the thermometer reports.",
      "after": "Steps"},
     lambda b: "use thermometer on <substance>`\n\n## Verification\n\nRead the value the thermometer reports.\n\n## Pitfalls" in b),
    ({"op": "delete_section", "section": "When to use"},
     lambda b: "When to use" not in b and "## Steps" in b and "# Measure" in b),
]


@pytest.mark.parametrize("op,check", CASES, ids=[c[0]["op"] for c in CASES])
def test_each_edit_op_on_a_real_skill_md(op, check, tmp_path):
    before = pack()
    after = apply_op(before, Op.parse(op))
    assert check(body(after)), body(after)
    assert after.frontmatter()[0] == before.frontmatter()[0]  # front matter untouched
    assert after.validate() == []


def test_file_ops_and_missing_targets():
    p = apply_op(pack(), Op.parse({"op": "create", "file": "references/units.md", "text": "# Units\nCelsius."}))
    assert p.files["references/units.md"] == "# Units\nCelsius.\n" and p.validate() == []
    p = apply_op(p, Op.parse({"op": "delete_file", "file": "references/units.md"}))
    assert "references/units.md" not in p.files
    with pytest.raises(ConfigError):
        Op.parse({"op": "create", "file": "../../etc/passwd", "text": "x"})
    with pytest.raises(ConfigError, match="not found"):
        apply_op(pack(), Op.parse({"op": "append_to_section", "section": "Nope", "text": "x"}))
    patched, skipped = apply_patch(pack(), parse_patch([
        {"op": "append_to_section", "section": "Nope", "text": "x"},
        {"op": "append_to_section", "section": "Steps", "text": "4. Report it."}]))
    assert len(skipped) == 1 and "4. Report it." in patched.body
    with pytest.raises(ConfigError, match="'op' must be one of"):
        Op.parse({"op": "rewrite_everything"})


# ---- merging --------------------------------------------------------------------------------------
def test_merge_of_conflicting_and_duplicate_patches_gives_one_patch():
    a = parse_patch([
        {"op": "append_to_section", "section": "Pitfalls", "text": "- Focus only on the substance asked for."},
        {"op": "replace_in_section", "section": "Steps", "old": "(kitchen)", "new": "(kitchen or workshop)"},
    ], source=0)
    b = parse_patch([
        {"op": "append_to_section", "section": "pitfalls", "text": "- Focus only on the substance asked for"},  # near dup
        {"op": "replace_in_section", "section": "Steps", "old": "(kitchen)", "new": "(hallway)"},  # conflict
    ], source=1)
    c = parse_patch([
        {"op": "replace_in_section", "section": "Steps", "old": "(kitchen)", "new": "(kitchen or workshop)"},  # dup of a
        {"op": "delete_section", "section": "When to use"},
        {"op": "append_to_section", "section": "When to use", "text": "- also for boiling points"},  # deleted
    ], source=2)
    merged = merge_patches([a, b, c])
    got = [o.to_dict() for o in merged.ops]
    assert got == [
        {"op": "append_to_section", "file": SKILL_MD, "section": "Pitfalls",
         "text": "- Focus only on the substance asked for."},
        {"op": "replace_in_section", "file": SKILL_MD, "section": "Steps", "old": "(kitchen)",
         "new": "(kitchen or workshop)"},
        {"op": "delete_section", "file": SKILL_MD, "section": "When to use"},
    ]
    reasons = sorted(r for _, r in merged.dropped)
    assert reasons == ["conflicts with a better-supported replace_in_section", "duplicate", "duplicate",
                       "its section is deleted"]
    assert merged.ops[1].support == 2
    result, skipped = apply_patch(pack(), merged.ops)
    assert skipped == [] and result.validate() == []


def test_merge_is_hierarchical_and_bounded():
    patches = [parse_patch([{"op": "append_to_section", "section": "Pitfalls", "text": f"- lesson {i}"}], i)
               for i in range(30)]
    merged = merge_patches(patches)
    assert merged.levels == 3  # 30 -> 6 -> 2 -> 1
    assert [o.text for o in merged.ops] == [f"- lesson {i}" for i in range(30)]
    assert merge_patches([]).ops == []


# ---- library --------------------------------------------------------------------------------------
def test_library_versions_diff_and_rollback(tmp_path):
    from agentdistill.skills import library
    from agentdistill.store.store import Store

    store = Store.open(str(tmp_path / "s.db"))
    v1 = library.save(store, pack(), distiller="manual")
    assert (v1.version, v1.parent_id) == (1, None)
    assert library.save(store, pack()).id == v1.id  # same contents: no new version
    p2 = apply_op(pack(), Op.parse({"op": "append_to_section", "section": "Steps", "text": "4. Report it."}))
    v2 = library.save(store, p2, distiller="trace2skill", metrics={"n": 1})
    assert (v2.version, v2.parent_id, v2.sha256) == (2, v1.id, p2.sha256)
    assert "+4. Report it." in library.diff(store, "measure-temperature", 1, 2)
    v3 = library.rollback(store, "measure-temperature", 1)
    assert (v3.version, v3.parent_id, v3.sha256, v3.distiller) == (3, v2.id, v1.sha256, "rollback")
    assert [v.version for v in library.versions(store, "measure-temperature")] == [1, 2, 3]
    with pytest.raises(AgentDistillError, match="no skill"):
        library.get(store, "nothing-here")
    with pytest.raises(ConfigError, match="not valid"):
        library.save(store, SkillPack("x-y", {SKILL_MD: "no front matter"}))


# ---- hosts ----------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_text()
    return out


def test_install_then_uninstall_for_every_host_leaves_the_tree_as_it_was(tmp_path):
    from agentdistill.skills.hosts import HOSTS, install, installed, uninstall

    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".cursor").mkdir(parents=True)  # a pre-existing parent must survive uninstall
    (home / ".cursor" / "settings.txt").write_text("keep")
    # ~/.config does not exist: opencode's and goose's installs share it, and it must go with the last one
    (project / ".claude" / "skills" / "mine").mkdir(parents=True)  # someone else's skill
    (project / ".claude" / "skills" / "mine" / "SKILL.md").write_text("---\nname: mine\ndescription: x\n---\n")
    before_home, before_project = snapshot(home), snapshot(project)
    p = pack()
    done = []
    for host in HOSTS.values():
        for scope in ("user", "project"):
            if (host.user if scope == "user" else host.project) is None:
                with pytest.raises(ConfigError, match="no project-scope"):
                    install(p, host, scope, project=project, home=home)
                continue
            path = install(p, host, scope, version=1, project=project, home=home)
            assert SkillPack.load(path).files == p.files
            done.append((host, scope))
    listed = {(i.host, i.scope, i.name, i.managed) for i in installed(project=project, home=home)}
    assert ("claude-code", "project", "mine", False) in listed
    assert all((h.name, s, p.name, True) in listed for h, s in done)
    for host, scope in done:
        uninstall(p.name, host, scope, project=project, home=home)
    assert snapshot(home) == before_home and snapshot(project) == before_project
    for order in (done, done[::-1]):  # whichever host goes first
        for host, scope in order:
            install(p, host, scope, project=project, home=home)
        for host, scope in order:
            uninstall(p.name, host, scope, project=project, home=home)
        assert snapshot(home) == before_home and snapshot(project) == before_project


def test_unmanaged_directories_are_never_touched(tmp_path):
    from agentdistill.skills.hosts import HOSTS, install, uninstall

    project = tmp_path / "p"
    theirs = project / ".claude" / "skills" / "measure-temperature"
    theirs.mkdir(parents=True)
    (theirs / "SKILL.md").write_text("---\nname: measure-temperature\ndescription: theirs\n---\nmine\n")
    before = snapshot(project)
    with pytest.raises(AgentDistillError, match="not managed by agentdistill"):
        install(pack(), HOSTS["claude-code"], "project", project=project, home=tmp_path / "h")
    with pytest.raises(AgentDistillError, match="not managed by agentdistill"):
        uninstall("measure-temperature", HOSTS["claude-code"], "project", project=project, home=tmp_path / "h")
    for name in ("../escape", "/abs/path", "a/../../b"):
        with pytest.raises(ConfigError, match="invalid skill name"):
            uninstall(name, HOSTS["claude-code"], "project", project=project, home=tmp_path / "h")
    assert snapshot(project) == before


def test_upgrade_and_rollback_replace_only_the_managed_pack(tmp_path):
    from agentdistill.skills.hosts import HOSTS, install, read_marker

    home = tmp_path / "h"
    v1 = pack()
    v2 = apply_op(v1, Op.parse({"op": "create", "file": "references/extra.md", "text": "more"}))
    path = install(v1, HOSTS["codex"], "user", version=1, home=home)
    install(v2, HOSTS["codex"], "user", version=2, home=home)
    assert (path / "references" / "extra.md").exists() and read_marker(path)["version"] == 2
    install(v1, HOSTS["codex"], "user", version=1, home=home)  # rollback
    assert not (path / "references").exists() and read_marker(path)["version"] == 1
    assert read_marker(path)["created_dirs"] == [str(home / ".agents" / "skills"), str(home / ".agents")]
