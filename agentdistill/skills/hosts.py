"""Install skill packs into agent hosts' skill directories (user or project scope).

agentdistill only ever touches directories it manages: each installed pack carries a marker file
(`.agentdistill.json`: name, version, sha256, and the parent directories the install created).
Installing over an unmanaged directory, or uninstalling one, is refused. Uninstall removes the pack
and the parent directories its install created (if empty), so install + uninstall leaves the tree
exactly as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.skills.pack import MARKER, SkillPack, check_name


@dataclass(frozen=True)
class Host:
    name: str
    project: str | None  # relative to the project root
    user: str | None  # relative to HOME
    legacy_user: tuple[str, ...] = ()  # older locations: listed, never installed into


HOSTS: dict[str, Host] = {h.name: h for h in [
    Host("claude-code", ".claude/skills", ".claude/skills"),
    Host("codex", ".agents/skills", ".agents/skills", legacy_user=(".codex/skills",)),
    Host("gemini-cli", ".gemini/skills", ".gemini/skills"),
    Host("opencode", ".opencode/skills", ".config/opencode/skills"),
    Host("goose", None, ".config/goose/skills"),
    Host("cursor", ".cursor/skills", ".cursor/skills"),
]}


def hosts(name: str) -> list[Host]:
    if name == "all":
        return list(HOSTS.values())
    if name not in HOSTS:
        raise ConfigError(f"unknown agent host {name!r}: choose one of {', '.join(HOSTS)} or all")
    return [HOSTS[name]]


def skills_dir(host: Host, scope: str, project: Path | None = None, home: Path | None = None) -> Path:
    if scope == "user":
        if host.user is None:
            raise ConfigError(f"{host.name} has no user-scope skills directory")
        return (home or Path.home()) / host.user
    if scope == "project":
        if host.project is None:
            raise ConfigError(f"{host.name} has no project-scope skills directory: use --scope user")
        return (project or Path.cwd()) / host.project
    raise ConfigError(f"unknown scope {scope!r}: use user or project")


def _root(scope: str, project: Path | None, home: Path | None) -> Path:
    return (home or Path.home()) if scope == "user" else (project or Path.cwd())


def read_marker(pack_dir: Path) -> dict | None:
    try:
        return json.loads((pack_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Installed:
    host: str
    scope: str
    path: Path
    name: str
    version: int | None
    sha256: str | None
    managed: bool


Known = Callable[[str, str], bool]  # (skill name, sha256) -> does the store hold that version?


def verified_marker(target: Path, known: Known | None = None) -> dict | None:
    """The install marker at `target` if its claim holds: a real directory (not a link) whose marker names
    it, whose files hash to the marker's sha256, and (given `known`) a version the store holds. A marker
    is a claim anyone can write: never proof that a directory is ours to replace or delete."""
    if target.is_symlink() or not target.is_dir():
        return None
    m = read_marker(target)
    if not isinstance(m, dict) or m.get("name") != target.name or not isinstance(m.get("sha256"), str):
        return None
    try:
        pack = SkillPack.load(target)
    except ConfigError:
        return None
    if pack.sha256 != m["sha256"] or (known is not None and not known(target.name, m["sha256"])):
        return None
    return m


def _created_dirs(marker: dict, target: Path, root: Path) -> list[str]:
    """The marker's created parents that are really between `root` and the pack: nothing else is removed."""
    keep = []
    for d in marker.get("created_dirs", []) if isinstance(marker.get("created_dirs"), list) else []:
        p = Path(str(d))
        if p in target.parents and (p == root or root in p.parents) and p != root and not p.is_symlink():
            keep.append(str(p))
    return keep


def install(pack: SkillPack, host: Host, scope: str, *, version: int | None = None, project: Path | None = None,
            home: Path | None = None, known: Known | None = None) -> Path:
    """Install or upgrade/downgrade a managed pack; refuses to touch anything it cannot show it installed."""
    check_name(pack.name)
    errors = pack.validate()
    if errors:
        raise ConfigError(f"skill {pack.name} is not valid: {errors[0]}")
    base = skills_dir(host, scope, project, home)
    target = base / pack.name
    if target.is_symlink():
        raise AgentDistillError(f"{target} is a symbolic link: refusing to install through it (remove the link)")
    marker = verified_marker(target, known) if target.exists() else None
    if target.exists() and marker is None:
        raise AgentDistillError(f"{target} exists and is not managed by agentdistill (no marker, or a marker that "
                                "does not match its files or the store): refusing to overwrite it (move it away or "
                                "pick another skill name)")
    root = _root(scope, project, home)
    created = _created_dirs(marker, target, root) if marker else []
    if not marker:  # remember which parents this install creates, so uninstall can remove exactly those
        d = base
        while not d.exists() and d != root and root in d.parents:
            created.append(str(d))
            d = d.parent
    base.mkdir(parents=True, exist_ok=True)
    pack.write(target)
    info = {"name": pack.name, "version": version, "sha256": pack.sha256, "host": host.name, "scope": scope,
            "installed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "created_dirs": created}
    (target / MARKER).write_text(json.dumps(info, indent=1))
    return target


def uninstall(name: str, host: Host, scope: str, *, project: Path | None = None, home: Path | None = None,
              known: Known | None = None) -> Path:
    check_name(name)
    target = skills_dir(host, scope, project, home) / name
    if target.is_symlink():
        raise AgentDistillError(f"{target} is a symbolic link: refusing to remove what it points to")
    if not target.exists():
        raise AgentDistillError(f"{name} is not installed for {host.name} ({scope}): nothing at {target}")
    marker = verified_marker(target, known)
    if marker is None:
        raise AgentDistillError(f"{target} is not managed by agentdistill (no marker, or a marker that does not match "
                                "its files or the store): refusing to remove it")
    root = _root(scope, project, home)
    created = _created_dirs(marker, target, root)
    shutil.rmtree(target)
    for d in sorted(created, key=lambda d: -len(Path(d).parts)):  # deepest first
        p = Path(d)
        if not p.is_dir():
            continue
        if not any(p.iterdir()):
            p.rmdir()
        else:  # another managed pack lives below (e.g. two hosts under ~/.config): it inherits the claim
            _hand_over(p, root)
    return target


def _hand_over(created: Path, root: Path) -> None:
    for host in HOSTS.values():
        for rel in (host.user, host.project):
            base = root / rel if rel else None
            if base is None or created not in base.parents or not base.is_dir():
                continue
            for pack_dir in base.iterdir():
                m = verified_marker(pack_dir)
                if m is not None and str(created) not in m.get("created_dirs", []):
                    m["created_dirs"] = list(m.get("created_dirs", [])) + [str(created)]
                    (pack_dir / MARKER).write_text(json.dumps(m, indent=1))
                    return


def installed(host_name: str = "all", *, project: Path | None = None, home: Path | None = None) -> list[Installed]:
    """Every skill directory in the hosts' skill folders, managed by us or not."""
    out = []
    for host in hosts(host_name):
        places = []
        if host.user:
            places.append(("user", (home or Path.home()) / host.user))
        places += [("user (legacy)", (home or Path.home()) / p) for p in host.legacy_user]
        if host.project:
            places.append(("project", (project or Path.cwd()) / host.project))
        for scope, base in places:
            if not base.is_dir():
                continue
            for d in sorted(p for p in base.iterdir() if p.is_dir() and (p / "SKILL.md").exists()):
                m = verified_marker(d)
                out.append(Installed(host.name, scope, d, d.name, m.get("version") if m else None,
                                     m.get("sha256") if m else None, m is not None))
    return out

