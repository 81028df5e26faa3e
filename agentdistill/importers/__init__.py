"""`agentdistill import`: trace files that real agent tools write, turned into episodes and steps in the store.

One module per format, each with `parse(path)` yielding sessions and bad lines (base.py) and `sniff(obj)`
recognising its first record:
- claude_code.py: Claude Code session JSONL (`~/.claude/projects/<cwd-slug>/<session-id>.jsonl`);
- codex.py: Codex CLI rollouts (`~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl`);
- atif.py: Harbor's Agent Trajectory Interchange Format (`trajectory.json`);
- openai_chat.py: OpenAI chat-format JSONL (`{"messages": [...]}` per line, as TRL's SFT reads it);
- inspect_log.py: Inspect AI logs (`.eval`), through inspect_ai's own reader.
writer.py stores each file in one transaction (all of it or nothing), each session once per source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentdistill.errors import AgentDistillError
from agentdistill.importers import atif, claude_code, codex, inspect_log, openai_chat
from agentdistill.importers.base import ImportFileError, read_jsonl
from agentdistill.importers.writer import FileReport, ImportRun, write_file
from agentdistill.store.store import Store

FORMATS = {m.FORMAT: m for m in (claude_code, codex, atif, openai_chat, inspect_log)}
_SUFFIXES = (".jsonl", ".json", ".eval")
_SNIFF_LINES = 20


def detect(path: Path) -> str:
    """The format of a file, from its suffix and first records."""
    if path.suffix == ".eval":
        return inspect_log.FORMAT
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        first = doc[0] if isinstance(doc, list) and doc else doc
        if isinstance(first, dict):
            for module in (atif, inspect_log, openai_chat):
                if module.sniff(first):
                    return module.FORMAT
        raise ImportFileError("format not recognised (not ATIF or an Inspect log): give --format")
    for i, entry in enumerate(read_jsonl(path)):
        if i >= _SNIFF_LINES:
            break
        if isinstance(entry, tuple):
            for module in (codex, claude_code, openai_chat, atif):  # codex first: its lines are typed
                if module.sniff(entry[1]):
                    return module.FORMAT
    raise ImportFileError("format not recognised (not Claude Code, Codex, OpenAI chat or ATIF JSONL): give --format")


def expand(paths: list[Path]) -> list[tuple[Path, bool]]:
    """(file, named by the user) for the files given, and the trace files under each directory given (.jsonl,
    .json, .eval), in order."""
    out = []
    for p in paths:
        if p.is_dir():
            out.extend((f, False) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in _SUFFIXES)
        elif p.exists():
            out.append((p, True))
        else:
            raise AgentDistillError(f"{p}: no such file or directory")
    return out


@dataclass
class ImportResult:
    run_id: str | None  # None: nothing was written
    files: list[FileReport] = field(default_factory=list)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.error]


def import_files(store: Store | Callable[[], Store], paths: list[Path], fmt: str = "auto",
                 tags: list[str] | None = None, role: str = "teacher", on_file=None) -> ImportResult:
    """Import each file (directories: the trace files under them) as format `fmt` ("auto": detected per file),
    all under one run of kind "import". `on_file(report)` is called as each file is done. `store` may be a
    function that opens it: then bad arguments (format, role, paths) fail before a store is created."""
    if fmt != "auto" and fmt not in FORMATS:
        raise AgentDistillError(f"--format {fmt!r}: use auto, {', '.join(FORMATS)}")
    if role not in ("teacher", "student"):
        raise AgentDistillError(f"--role {role!r}: use teacher or student")
    files = expand(paths)
    if not files:
        raise AgentDistillError("no trace files found (.jsonl, .json, .eval) in the paths given")
    tags = [t.strip() for t in tags or [] if t.strip()]
    if callable(store):
        store = store()
    run = ImportRun(store, f"import ({fmt}): {files[0][0].name}" + (f" and {len(files) - 1} more" if len(files) > 1 else ""),
                    {"import": {"paths": [str(p) for p in paths], "format": fmt, "tags": tags, "role": role}})
    result = ImportResult(None)
    for path, named in files:
        try:
            kind = detect(path) if fmt == "auto" else fmt
        except ImportFileError as e:
            report = FileReport(path, fmt)
            if named:  # a file the user named: its format matters
                report.error = str(e)
            else:  # a file found in a directory: other tools' files live there too
                report.note = f"skipped: {e}"
        else:
            report = write_file(store, run, path, kind, FORMATS[kind].parse(path), tags, role)
        result.files.append(report)
        if on_file:
            on_file(report)
    run.finish()
    result.run_id = run.id
    return result
