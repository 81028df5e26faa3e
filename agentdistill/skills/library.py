"""The versioned skill library in the store: every pack version with its parent, sha256, producing
run, distiller and metrics. Versions are immutable; a rollback is a new version with old contents.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.secrets import redact
from agentdistill.skills.pack import SkillPack, check_name
from agentdistill.store.models import Skill, SkillVersion
from agentdistill.store.store import Store


@dataclass
class Version:
    id: int
    name: str
    version: int
    parent_id: int | None
    sha256: str
    distiller: str | None
    run_id: str | None
    metrics: dict[str, Any]
    created_at: Any
    pack: SkillPack


def _version(skill: Skill, v: SkillVersion) -> Version:
    return Version(v.id, skill.name, v.version, v.parent_id, v.sha256, v.distiller, v.run_id, v.metrics or {},
                   v.created_at, SkillPack.from_stored(skill.name, dict(v.files)))


def check_valid(pack: SkillPack) -> None:
    """One line naming the first problem of an invalid pack."""
    errors = pack.validate()
    if errors:
        raise ConfigError(f"skill {pack.name} is not valid: {errors[0]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))


def save(store: Store, pack: SkillPack, *, distiller: str | None = None, run_id: str | None = None,
         parent_id: int | None = None, metrics: dict[str, Any] | None = None) -> Version:
    """Store `pack` as the next version of its skill (refused when invalid). Identical contents to the
    latest version return that version instead of a duplicate."""
    check_valid(pack)
    pack = SkillPack(pack.name, {p: redact(v) if isinstance(v, str) else v for p, v in pack.files.items()})
    with store.session() as s, s.begin():
        skill = s.scalar(select(Skill).where(Skill.name == pack.name))
        if skill is None:
            skill = Skill(name=pack.name, description=pack.description)
            s.add(skill)
            s.flush()
        latest = s.scalar(select(SkillVersion).where(SkillVersion.skill_id == skill.id)
                          .order_by(SkillVersion.version.desc()).limit(1))
        if latest is not None and latest.sha256 == pack.sha256:
            return _version(skill, latest)
        number = (s.scalar(select(func.max(SkillVersion.version)).where(SkillVersion.skill_id == skill.id)) or 0) + 1
        row = SkillVersion(skill_id=skill.id, version=number, parent_id=parent_id if parent_id is not None else
                           (latest.id if latest else None), files=pack.stored_files(), sha256=pack.sha256,
                           distiller=distiller, run_id=run_id, metrics=metrics or {})
        skill.description = pack.description
        s.add(row)
        s.flush()
        return _version(skill, row)


def get(store: Store, name: str, version: int | None = None) -> Version:
    check_name(name)
    with store.session() as s:
        skill = s.scalar(select(Skill).where(Skill.name == name))
        if skill is None:
            raise AgentDistillError(f"no skill {name!r} in the store: see `agentdistill skills list`")
        q = select(SkillVersion).where(SkillVersion.skill_id == skill.id)
        q = q.where(SkillVersion.version == version) if version else q.order_by(SkillVersion.version.desc()).limit(1)
        row = s.scalar(q)
        if row is None:
            raise AgentDistillError(f"skill {name} has no version {version}: see `agentdistill skills show {name}`")
        return _version(skill, row)


def has(store: Store, name: str, sha256: str) -> bool:
    """Whether the library holds a version of skill `name` with exactly this content."""
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(SkillVersion).join(Skill, Skill.id == SkillVersion.skill_id)
                        .where(Skill.name == name, SkillVersion.sha256 == sha256)) > 0


def get_by_id(store: Store, version_id: int) -> Version:
    with store.session() as s:
        row = s.get(SkillVersion, version_id)
        if row is None:
            raise AgentDistillError(f"no skill version with id {version_id}")
        return _version(s.get(Skill, row.skill_id), row)


def versions(store: Store, name: str | None = None) -> list[Version]:
    with store.session() as s:
        q = select(Skill, SkillVersion).join(SkillVersion, SkillVersion.skill_id == Skill.id)
        if name:
            q = q.where(Skill.name == check_name(name))
        return [_version(sk, v) for sk, v in s.execute(q.order_by(Skill.name, SkillVersion.version))]


def diff(store: Store, name: str, a: int, b: int) -> str:
    va, vb = get(store, name, a), get(store, name, b)
    out = []
    for path in sorted(set(va.pack.files) | set(vb.pack.files)):
        old, new = va.pack.files.get(path, ""), vb.pack.files.get(path, "")
        if isinstance(old, bytes) or isinstance(new, bytes):
            if old != new:
                out.append(f"Binary file {name}@v{a}/{path} and {name}@v{b}/{path} differ\n")
            continue
        out += difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                    f"{name}@v{a}/{path}", f"{name}@v{b}/{path}")
    return "".join(out)


def rollback(store: Store, name: str, version: int) -> Version:
    """A new latest version whose contents are those of `version` (history is kept)."""
    old = get(store, name, version)
    latest = get(store, name)
    if latest.sha256 == old.sha256:
        return latest
    with store.session() as s, s.begin():
        skill = s.scalar(select(Skill).where(Skill.name == name))
        row = SkillVersion(skill_id=skill.id, version=latest.version + 1, parent_id=latest.id, files=old.pack.stored_files(),
                           sha256=old.sha256, distiller="rollback", run_id=None,
                           metrics={"rolled_back_to": version})
        s.add(row)
        s.flush()
        return _version(skill, row)
