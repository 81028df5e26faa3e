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


def install(pack: SkillPack, host: Host, scope: str, *, version: int | None = None, project: Path | None = None,
            home: Path | None = None) -> Path:
    """Install or upgrade/downgrade a managed pack; refuses to touch an unmanaged directory."""
    check_name(pack.name)
    errors = pack.validate()
    if errors:
        raise ConfigError(f"skill {pack.name} is not valid: {errors[0]}")
    base = skills_dir(host, scope, project, home)
    target = base / pack.name
    marker = read_marker(target) if target.exists() else None
    if target.exists() and marker is None:
        raise AgentDistillError(f"{target} exists and is not managed by agentdistill: refusing to overwrite it "
                                "(move it away or pick another skill name)")
    root = _root(scope, project, home)
    created = list(marker.get("created_dirs", [])) if marker else []
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


def uninstall(name: str, host: Host, scope: str, *, project: Path | None = None, home: Path | None = None) -> Path:
    check_name(name)
    target = skills_dir(host, scope, project, home) / name
    if not target.exists():
        raise AgentDistillError(f"{name} is not installed for {host.name} ({scope}): nothing at {target}")
    marker = read_marker(target)
    if marker is None:
        raise AgentDistillError(f"{target} is not managed by agentdistill: refusing to remove it")
    shutil.rmtree(target)
    root = _root(scope, project, home)
    for d in sorted(marker.get("created_dirs", []), key=lambda d: -len(Path(d).parts)):  # deepest first
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
                m = read_marker(pack_dir)
                if m is not None and str(created) not in m.get("created_dirs", []):
                    m["created_dirs"] = m.get("created_dirs", []) + [str(created)]
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
                m = read_marker(d)
                out.append(Installed(host.name, scope, d, d.name, m.get("version") if m else None,
                                     m.get("sha256") if m else None, m is not None))
    return out

