"""Skill packs in the Agent Skills format: `NAME/SKILL.md` (YAML front matter + markdown body) with
optional `references/`, `scripts/`, `assets/`. Validation is the reference library's (`skills-ref`)
plus our own file-layout checks; provenance lives in the front matter's `metadata` map.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from agentdistill.errors import ConfigError

SKILL_MD = "SKILL.md"
SUBDIRS = ("references", "scripts", "assets")
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MARKER = ".agentdistill.json"  # written by host installs; never part of a pack
MAX_FILE_BYTES = 8 << 20  # a pack is instructions and small assets: bound what a pack may make us copy
MAX_PACK_BYTES = 16 << 20
BINARY_KEY = "base64"  # how a binary asset is kept in the store's JSON: {"base64": "..."}


def check_name(name: str) -> str:
    """A skill name that is safe as one directory component (and valid per the spec), or ConfigError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 64:
        raise ConfigError(f"invalid skill name {name!r}: use 1-64 lowercase letters, digits and single hyphens "
                          "(no '/', '..' or absolute paths)")
    return name


def check_relpath(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts or path != str(p):
        raise ConfigError(f"invalid file path {path!r} in skill pack: use a relative path inside the pack")
    if str(p) != SKILL_MD and p.parts[0] not in SUBDIRS:
        raise ConfigError(f"file {path!r}: pack files are SKILL.md or live under {', '.join(SUBDIRS)}/")
    return str(p)


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree at `path` (a link itself, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def render_skill_md(name: str, description: str, body: str, metadata: dict[str, str] | None = None) -> str:
    lines = ["---", f"name: {name}", f"description: {_yaml_str(description)}"]
    if metadata:
        lines.append("metadata:")
        lines += [f"  {k}: {_yaml_str(str(v))}" for k, v in sorted(metadata.items())]
    lines.append("---")
    return "\n".join(lines) + "\n\n" + body.strip() + "\n"


@dataclass
class SkillPack:
    name: str
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative posix path -> text (bytes: assets)

    @classmethod
    def new(cls, name: str, description: str, body: str, metadata: dict[str, str] | None = None) -> SkillPack:
        return cls(check_name(name), {SKILL_MD: render_skill_md(name, description, body, metadata)})

    @classmethod
    def load(cls, path: str | Path) -> SkillPack:
        """Read a pack directory. Links are refused (a link to /etc/passwd must not become a "reference"),
        and so is anything that is not a plain file; text files must be UTF-8, except assets, which may be
        binary (images, templates); sizes are bounded."""
        root = Path(path)
        if not (root / SKILL_MD).is_file():
            raise ConfigError(f"{root} is not a skill pack: it has no {SKILL_MD}")
        files: dict[str, str | bytes] = {}
        total = 0
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in sorted(dirnames + filenames):
                f = Path(dirpath) / name
                rel = f.relative_to(root).as_posix()
                if f.is_symlink():
                    raise ConfigError(f"{f} is a symbolic link: skill packs may not contain links (copy the file in)")
                if name in dirnames:
                    continue
                if not f.is_file():
                    raise ConfigError(f"{f} is not a regular file: skill packs hold only files and folders")
                if name == MARKER:
                    continue
                size = f.stat().st_size
                total += size
                if size > MAX_FILE_BYTES or total > MAX_PACK_BYTES:
                    raise ConfigError(f"{f}: skill packs are limited to {MAX_FILE_BYTES >> 20} MiB a file and "
                                      f"{MAX_PACK_BYTES >> 20} MiB in all (this file: {size / 2**20:.1f} MiB)")
                data = f.read_bytes()
                try:
                    files[rel] = data.decode("utf-8")
                except UnicodeDecodeError:
                    if not rel.startswith("assets/"):
                        raise ConfigError(f"{f}: skill pack files must be UTF-8 text (binary files belong "
                                          "under assets/)") from None
                    files[rel] = data
        return cls(root.name, files)

    def stored_files(self) -> dict[str, str | dict[str, str]]:
        """The files as the store keeps them (JSON): binary assets base64-encoded."""
        return {p: {BINARY_KEY: base64.b64encode(v).decode()} if isinstance(v, bytes) else v
                for p, v in self.files.items()}

    @classmethod
    def from_stored(cls, name: str, files: dict) -> SkillPack:
        return cls(name, {p: base64.b64decode(v[BINARY_KEY]) if isinstance(v, dict) else v for p, v in files.items()})

    # ---- front matter ---------------------------------------------------------------------------
    def frontmatter(self) -> tuple[dict, str]:
        from skills_ref.errors import ParseError
        from skills_ref.parser import parse_frontmatter

        try:
            return parse_frontmatter(self.files.get(SKILL_MD, ""))
        except ParseError as e:
            raise ConfigError(f"skill {self.name}: {e}") from None

    @property
    def description(self) -> str:
        return str(self.frontmatter()[0].get("description", ""))

    @property
    def body(self) -> str:
        return self.frontmatter()[1]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.frontmatter()[0].get("metadata") or {})

    def with_metadata(self, **values: str) -> SkillPack:
        meta, body = self.frontmatter()
        merged = {**(meta.get("metadata") or {}), **{k: str(v) for k, v in values.items()}}
        files = dict(self.files)
        files[SKILL_MD] = render_skill_md(self.name, str(meta.get("description", "")), body, merged)
        return SkillPack(self.name, files)

    def with_body(self, body: str) -> SkillPack:
        meta, _ = self.frontmatter()
        files = dict(self.files)
        files[SKILL_MD] = render_skill_md(self.name, str(meta.get("description", "")), body, meta.get("metadata"))
        return SkillPack(self.name, files)

    # ---- identity, validation, disk -------------------------------------------------------------
    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.files):
            data = self.files[path]
            h.update(path.encode() + b"\0" + (data if isinstance(data, bytes) else data.encode()) + b"\0")
        return h.hexdigest()

    def validate(self) -> list[str]:
        """Problems per the Agent Skills spec (skills-ref) and our layout rules; [] when valid."""
        from skills_ref import validate

        errors = []
        try:
            check_name(self.name)
        except ConfigError as e:
            return [str(e)]
        for path, data in self.files.items():
            try:
                check_relpath(path)
            except ConfigError as e:
                errors.append(str(e))
            if isinstance(data, bytes) and not path.startswith("assets/"):
                errors.append(f"file {path!r}: binary files belong under assets/")
        size = sum(len(d if isinstance(d, bytes) else d.encode()) for d in self.files.values())
        if size > MAX_PACK_BYTES:
            errors.append(f"the pack holds {size / 2**20:.1f} MiB: the limit is {MAX_PACK_BYTES >> 20} MiB")
        if errors:
            return errors
        with tempfile.TemporaryDirectory() as tmp:
            d = self.write(Path(tmp) / self.name)
            errors += validate(d)
        return errors

    def write(self, path: str | Path) -> Path:
        """Write the pack as directory `path` (replacing it), atomically. A link at `path` is refused:
        writing through it would replace whatever it points to."""
        out = Path(path)
        for rel in self.files:
            check_relpath(rel)
        if out.is_symlink():
            raise ConfigError(f"{out} is a symbolic link: refusing to write a skill pack through it")
        tmp = out.with_name(out.name + ".partial")
        _remove(tmp)
        try:
            for rel, data in self.files.items():
                f = tmp / rel
                f.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, bytes):
                    f.write_bytes(data)
                else:
                    f.write_text(data, encoding="utf-8")
                if rel.startswith("scripts/"):
                    f.chmod(0o755)
            tmp.mkdir(parents=True, exist_ok=True)
            if out.exists():
                shutil.rmtree(out)
            tmp.replace(out)
        finally:
            _remove(tmp)  # nothing half-written is left behind
        return out

    def as_prompt(self) -> str:
        """The pack inline: for an agent's system prompt."""
        refs = [p for p in sorted(self.files) if p != SKILL_MD and p.endswith(".md") and isinstance(self.files[p], str)]
        extra = "".join(f"\n\n## {p}\n{self.files[p].strip()}" for p in refs)
        return f"# Skill: {self.name}\n{self.description}\n\n{self.body}{extra}"
