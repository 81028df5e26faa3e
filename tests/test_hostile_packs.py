"""Hostile skill packs and install targets: links out of the pack, forged install markers, oversized files,
links where a pack would be written. Binary assets, which the format allows, are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.skills import hosts, library
from agentdistill.skills.pack import MARKER, SkillPack
from agentdistill.store.store import Store
from tests.conftest import run_cli

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + bytes(range(256))
SKILL = "---\nname: {name}\ndescription: A test skill.\n---\n# Test\nDo the thing.\n"


def make_pack(root: Path, name: str = "demo") -> Path:
    d = root / name
    (d / "references").mkdir(parents=True)
    (d / "SKILL.md").write_text(SKILL.format(name=name))
    (d / "references" / "notes.md").write_text("notes\n")
    return d


def test_links_out_of_the_pack_are_refused_everywhere(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-CONTENT\n")
    d = make_pack(tmp_path / "in")
    (d / "references" / "notes.md").unlink()
    (d / "references" / "notes.md").symlink_to(secret)
    with pytest.raises(ConfigError, match="symbolic link"):
        SkillPack.load(d)
    linked_dir = make_pack(tmp_path / "in2")
    (linked_dir / "assets").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="symbolic link"):
        SkillPack.load(linked_dir)
    db = tmp_path / "s.db"
    p = run_cli("skills", "validate", str(d))
    assert p.returncode != 0 and "symbolic link" in (p.stdout + p.stderr) and "Traceback" not in p.stderr
    p = run_cli("skills", "add", str(d), "--db", str(db))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "symbolic link" in p.stderr
    assert not db.exists()  # refused before the store was opened: nothing written


def test_an_invalid_pack_is_refused_before_the_store_is_created(tmp_path):
    d = make_pack(tmp_path / "in")
    d = d.rename(d.with_name("other-name"))  # the directory's name no longer matches the skill's
    db = tmp_path / "s.db"
    p = run_cli("skills", "add", str(d), "--db", str(db))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "is not valid" in p.stderr, p.stderr
    assert not db.exists() and not list(tmp_path.glob("s.db*"))


def test_binary_assets_are_accepted_and_round_trip(tmp_path):
    d = make_pack(tmp_path / "in")
    (d / "assets").mkdir()
    (d / "assets" / "logo.png").write_bytes(PNG)
    pack = SkillPack.load(d)
    assert pack.files["assets/logo.png"] == PNG and pack.validate() == []
    store = Store.open(str(tmp_path / "s.db"))
    v = library.save(store, pack)
    again = library.get(store, "demo")  # through the store's JSON and back
    assert again.pack.files["assets/logo.png"] == PNG and again.sha256 == pack.sha256
    out = again.pack.write(tmp_path / "export" / "demo")
    assert (out / "assets" / "logo.png").read_bytes() == PNG
    target = hosts.install(again.pack, hosts.HOSTS["claude-code"], "project", version=v.version,
                           project=tmp_path / "proj", known=lambda n, h: library.has(store, n, h))
    assert (target / "assets" / "logo.png").read_bytes() == PNG
    # binary outside assets/ is still refused
    (d / "references" / "blob.md").write_bytes(PNG)
    with pytest.raises(ConfigError, match="binary files belong under assets/"):
        SkillPack.load(d)


def test_pack_size_is_bounded(tmp_path):
    d = make_pack(tmp_path / "in")
    with open(d / "references" / "huge.md", "wb") as f:
        f.truncate(50 << 20)  # 50 MB
    with pytest.raises(ConfigError, match="limited to 8 MiB a file"):
        SkillPack.load(d)


@pytest.fixture
def installed(tmp_path):
    """A genuine install of a pack from the store, and the store's verification."""
    store = Store.open(str(tmp_path / "s.db"))
    v = library.save(store, SkillPack.load(make_pack(tmp_path / "src")))
    known = lambda n, h: library.has(store, n, h)  # noqa: E731
    project = tmp_path / "proj"
    target = hosts.install(v.pack, hosts.HOSTS["claude-code"], "project", version=v.version, project=project,
                           known=known)
    return store, v, known, project, target


def test_an_install_target_that_is_a_link_is_refused_and_nothing_is_left(installed, tmp_path):
    store, v, known, project, target = installed
    hosts.uninstall("demo", hosts.HOSTS["claude-code"], "project", project=project, known=known)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere)
    for act in (lambda: hosts.install(v.pack, hosts.HOSTS["claude-code"], "project", project=project, known=known),
                lambda: hosts.uninstall("demo", hosts.HOSTS["claude-code"], "project", project=project, known=known)):
        with pytest.raises(AgentDistillError, match="symbolic link"):
            act()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert not list(target.parent.glob("*.partial"))
    with pytest.raises(ConfigError, match="symbolic link"):  # exporting through a link is refused too
        v.pack.write(target)


def test_a_forged_marker_is_a_claim_not_proof(installed, tmp_path):
    store, v, known, project, target = installed
    # someone else's directory with a marker that copies ours and even hashes right, but names files the
    # store never held: neither replaced nor removed
    theirs = project / ".claude" / "skills" / "theirs"
    make_pack(theirs.parent, "theirs")
    forged = SkillPack.load(theirs)
    (theirs / MARKER).write_text(json.dumps({"name": "theirs", "sha256": forged.sha256, "created_dirs": []}))
    with pytest.raises(AgentDistillError, match="not managed by agentdistill"):
        hosts.uninstall("theirs", hosts.HOSTS["claude-code"], "project", project=project, known=known)
    with pytest.raises(AgentDistillError, match="not managed by agentdistill"):
        hosts.install(SkillPack.new("theirs", "x", "# x\nbody"), hosts.HOSTS["claude-code"], "project",
                      project=project, known=known)
    assert (theirs / "references" / "notes.md").exists()
    # our own install with a marker edited to claim a directory outside the skills folder: that claim is ignored
    victim = tmp_path / "victim"
    victim.mkdir()
    marker = json.loads((target / MARKER).read_text())
    marker["created_dirs"] = [str(victim), str(tmp_path)]
    (target / MARKER).write_text(json.dumps(marker))
    hosts.uninstall("demo", hosts.HOSTS["claude-code"], "project", project=project, known=known)
    assert victim.is_dir() and not target.exists()
    # files changed after the install: no longer the version the marker names, so not replaced
    target = hosts.install(v.pack, hosts.HOSTS["claude-code"], "project", project=project, known=known)
    (target / "references" / "notes.md").write_text("edited by the user\n")
    with pytest.raises(AgentDistillError, match="not managed by agentdistill"):
        hosts.install(v.pack, hosts.HOSTS["claude-code"], "project", project=project, known=known)
