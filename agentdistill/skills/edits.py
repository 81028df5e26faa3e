"""Patches of edit operations on skill packs, and their hierarchical merge (Trace2Skill's patch protocol).

An analyst proposes a patch (a list of operations) against a frozen snapshot of the pack. Operations:

  insert_after / insert_before   {file, anchor, text}        next to the first line containing `anchor`
  append_to_section              {file, section, text}       at the end of a markdown section
  replace_in_section             {file, section, old, new}   first `old` inside the section
  add_section                    {file, section, text, level?, after?}
  delete_section                 {file, section}
  create                         {file, text}                a new file (references/, scripts/, assets/)
  delete_file                    {file}

`file` defaults to SKILL.md; sections are matched by heading text, case-insensitively. Patches are
merged in groups of 5, level by level (at most 5 levels), into one patch: exact and near duplicates
are dropped, conflicting operations on the same target are resolved by support (how many patches
proposed them; ties: the earlier patch), and a section or file that is deleted takes no other edits.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from agentdistill.errors import ConfigError
from agentdistill.skills.pack import SKILL_MD, SkillPack, check_relpath

OPS = {
    "insert_after": ("anchor", "text"),
    "insert_before": ("anchor", "text"),
    "append_to_section": ("section", "text"),
    "replace_in_section": ("section", "old", "new"),
    "add_section": ("section", "text"),
    "delete_section": ("section",),
    "create": ("file", "text"),
    "delete_file": ("file",),
}
GROUP = 5
MAX_LEVELS = 5
NEAR_DUPLICATE = 0.9  # difflib ratio above which two texts for the same target say the same thing


@dataclass
class Op:
    op: str
    file: str = SKILL_MD
    section: str | None = None
    anchor: str | None = None
    text: str | None = None
    old: str | None = None
    new: str | None = None
    level: int = 2
    after: str | None = None
    support: int = 1  # how many analysts' patches proposed it (set by merging)
    source: int = 0  # index of the patch it came from (ties go to the earlier one)

    @classmethod
    def parse(cls, d: dict[str, Any], source: int = 0) -> Op:
        if not isinstance(d, dict) or d.get("op") not in OPS:
            raise ConfigError(f"bad edit operation {str(d)[:120]!r}: 'op' must be one of {', '.join(OPS)}")
        missing = [k for k in OPS[d["op"]] if not isinstance(d.get(k), str) or not d.get(k).strip()]
        if missing:
            raise ConfigError(f"edit operation {d['op']} needs non-empty {', '.join(missing)}")
        fields = {k: d[k] for k in ("file", "section", "anchor", "text", "old", "new", "after") if d.get(k) is not None}
        fields["file"] = check_relpath(str(fields.get("file", SKILL_MD)))
        if "level" in d:
            fields["level"] = int(d["level"]) if str(d["level"]).isdigit() and 1 <= int(d["level"]) <= 6 else 2
        return cls(op=d["op"], source=source, **{k: str(v) if k != "level" else v for k, v in fields.items()})

    def to_dict(self) -> dict[str, Any]:
        keep = {"op": self.op, "file": self.file}
        for k in ("section", "anchor", "text", "old", "new", "after"):
            if getattr(self, k) is not None:
                keep[k] = getattr(self, k)
        if self.op == "add_section":
            keep["level"] = self.level
        return keep

    @property
    def target(self) -> tuple:
        """What the operation touches: two ops on the same target may conflict."""
        if self.op in ("create", "delete_file"):
            return ("file", self.file)
        if self.op in ("add_section", "delete_section"):
            return ("section", self.file, _norm(self.section))
        if self.op == "replace_in_section":
            return ("replace", self.file, _norm(self.section), _norm(self.old))
        if self.op in ("insert_after", "insert_before"):
            return (self.op, self.file, _norm(self.anchor))
        return (self.op, self.file, _norm(self.section))

    @property
    def payload(self) -> str:
        return self.new if self.op == "replace_in_section" else (self.text or "")


def _norm(s: str | None) -> str:
    return re.sub(r"\s+", " ", (s or "").strip().lower())


def _similar(a: str, b: str) -> bool:
    """Same words (case, spacing, punctuation aside), or long texts that differ only a little. Short
    texts must match exactly: "lesson 1" and "lesson 10" are different lessons."""
    a, b = (re.sub(r"[^a-z0-9 ]", "", _norm(x)) for x in (a, b))
    if a == b:
        return True
    return min(len(a), len(b)) >= 40 and difflib.SequenceMatcher(None, a, b).ratio() >= NEAR_DUPLICATE


def parse_patch(ops: list[dict[str, Any]], source: int = 0) -> list[Op]:
    if not isinstance(ops, list):
        raise ConfigError("a patch is a JSON list of edit operations")
    return [Op.parse(d, source) for d in ops]


# ---- merging --------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    ops: list[Op]
    dropped: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (op, why)
    levels: int = 0


_ORDER = {"create": 0, "add_section": 1, "append_to_section": 2, "insert_after": 2, "insert_before": 2,
          "replace_in_section": 2, "delete_section": 3, "delete_file": 4}


def _merge_group(patches: list[list[Op]], dropped: list) -> list[Op]:
    ops = [op for patch in patches for op in patch]
    # 1. duplicates: same target and (nearly) the same payload -> one op with their summed support
    kept: list[Op] = []
    for op in ops:
        twin = next((k for k in kept if k.op == op.op and k.target == op.target and _similar(k.payload, op.payload)),
                    None)
        if twin is None:
            kept.append(Op(**{**op.__dict__}))
            continue
        twin.support += op.support
        if len(op.payload) > len(twin.payload):  # keep the fuller wording
            twin.text, twin.new = op.text, op.new
        twin.source = min(twin.source, op.source)
        dropped.append((op.to_dict(), "duplicate"))
    # 2. conflicts: different edits of one exclusive target (a replacement, a created file, a new section)
    by_target: dict[tuple, list[Op]] = defaultdict(list)
    for op in kept:
        by_target[op.target].append(op)
    resolved: list[Op] = []
    for target, group in by_target.items():
        exclusive = target[0] in ("replace", "file", "section")
        if len(group) == 1 or not exclusive:
            resolved += group
            continue
        winner = max(group, key=lambda o: (o.support, -o.source))
        resolved.append(winner)
        dropped += [(o.to_dict(), f"conflicts with a better-supported {winner.op}") for o in group if o is not winner]
    # 3. deleted sections and files take no other edits
    gone_files = {o.file for o in resolved if o.op == "delete_file"}
    gone_sections = {(o.file, _norm(o.section)) for o in resolved if o.op == "delete_section"}
    final = []
    for o in resolved:
        if o.op != "delete_file" and o.file in gone_files:
            dropped.append((o.to_dict(), "its file is deleted"))
        elif o.op not in ("delete_section", "add_section") and o.section and (o.file, _norm(o.section)) in gone_sections:
            dropped.append((o.to_dict(), "its section is deleted"))
        else:
            final.append(o)
    return sorted(final, key=lambda o: (_ORDER[o.op], o.source))


def merge_patches(patches: list[list[Op]]) -> MergeResult:
    """Merge analysts' patches hierarchically: groups of 5 per level, at most 5 levels, into one patch."""
    dropped: list = []
    level_patches = [p for p in patches if p]
    if len(level_patches) > GROUP ** MAX_LEVELS:
        raise ConfigError(f"{len(level_patches)} patches exceed {GROUP}^{MAX_LEVELS}: analyze fewer trajectories")
    levels = 0
    while len(level_patches) > 1 or (levels == 0 and level_patches):
        level_patches = [_merge_group(level_patches[i:i + GROUP], dropped) for i in range(0, len(level_patches), GROUP)]
        levels += 1
    return MergeResult(level_patches[0] if level_patches else [], dropped, levels)


# ---- applying -------------------------------------------------------------------------------------
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _sections(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """(start, end, level, title) of each markdown section; end is exclusive (next heading of <= level)."""
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := _HEADING.match(line))]
    out = []
    for j, (i, level, title) in enumerate(heads):
        end = next((k for k, lv, _ in heads[j + 1:] if lv <= level), len(lines))
        out.append((i, end, level, title))
    return out


def _find_section(lines: list[str], title: str):
    for s in _sections(lines):
        if _norm(s[3]) == _norm(title):
            return s
    return None


def apply_op(pack: SkillPack, op: Op) -> SkillPack:
    """The pack with one operation applied; ConfigError (naming the op) when its target is missing."""
    files = dict(pack.files)
    if op.op == "create":
        if op.file in files:
            raise ConfigError(f"create {op.file}: it exists already")
        files[op.file] = op.text.rstrip() + "\n"
        return SkillPack(pack.name, files)
    if op.op == "delete_file":
        if op.file == SKILL_MD or op.file not in files:
            raise ConfigError(f"delete_file {op.file}: {'SKILL.md cannot be deleted' if op.file == SKILL_MD else 'no such file'}")
        del files[op.file]
        return SkillPack(pack.name, files)
    if op.file not in files:
        raise ConfigError(f"{op.op}: no file {op.file} in the pack")
    text = files[op.file]
    if isinstance(text, bytes):
        raise ConfigError(f"{op.op}: {op.file} is a binary asset; only text files are edited")
    head, body = "", text
    if op.file == SKILL_MD:  # edit the body only: the front matter is the library's
        m = re.match(r"\A---\n.*?\n---\n", text, flags=re.S)
        if m:
            head, body = text[: m.end()], text[m.end():]
    lines = body.split("\n")
    new_lines = [line for line in (op.text or "").strip("\n").split("\n")]
    if op.op in ("insert_after", "insert_before", "append_to_section") and _norm(op.text) in _norm(body):
        raise ConfigError(f"{op.op}: the text is already in {op.file}")  # deepening twice adds nothing twice
    if op.op in ("insert_after", "insert_before"):
        i = next((k for k, line in enumerate(lines) if op.anchor.strip() in line), None)
        if i is None:
            raise ConfigError(f"{op.op}: anchor {op.anchor!r} not found in {op.file}")
        at = i + 1 if op.op == "insert_after" else i
        lines[at:at] = new_lines
    elif op.op == "add_section":
        if _find_section(lines, op.section):
            raise ConfigError(f"add_section: section {op.section!r} exists already in {op.file}")
        block = ["", f"{'#' * op.level} {op.section.strip()}", ""] + new_lines
        after = _find_section(lines, op.after) if op.after else None
        at = after[1] if after else len(lines)
        while at > 0 and lines[at - 1].strip() == "":  # keep the blank lines that separate sections after it
            at -= 1
        lines[at:at] = block
    else:
        sec = _find_section(lines, op.section)
        if sec is None:
            raise ConfigError(f"{op.op}: section {op.section!r} not found in {op.file}")
        start, end, _, _ = sec
        if op.op == "delete_section":
            del lines[start:end]
        elif op.op == "append_to_section":
            at = end
            while at > start + 1 and lines[at - 1].strip() == "":
                at -= 1
            lines[at:at] = new_lines
        elif op.op == "replace_in_section":
            chunk = "\n".join(lines[start:end])
            if op.old not in chunk:
                raise ConfigError(f"replace_in_section: {op.old[:60]!r} not found in section {op.section!r}")
            lines[start:end] = chunk.replace(op.old, op.new, 1).split("\n")
    files[op.file] = head + "\n".join(lines)
    return SkillPack(pack.name, files)


def apply_patch(pack: SkillPack, ops: list[Op]) -> tuple[SkillPack, list[tuple[dict[str, Any], str]]]:
    """Apply what applies; operations whose target is missing are skipped and reported, never half-applied."""
    skipped = []
    for op in ops:
        try:
            pack = apply_op(pack, op)
        except ConfigError as e:
            skipped.append((op.to_dict(), str(e)))
    return pack, skipped
