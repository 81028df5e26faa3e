"""Training data from the store: stored episodes -> chat conversations -> tokens with an agent-only loss mask.

Conversations are rendered by the same function the LLM policy uses at rollout time
(`render_messages`), so a trained student sees exactly the prompts it was trained on.

Agent-only loss without `{% generation %}` markers: SmolLM2's template (and many others) has none,
so TRL's `assistant_only_loss` refuses it. We find each agent turn's characters by rendering the
chat up to the turn with and without it (the template must be prefix-preserving, which we check),
then mark the tokens whose offsets fall inside those spans. The span covers the turn's content and
its end-of-turn token (so the model learns to stop), not the role header the prompt already holds.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdistill.agents.policies import SYSTEM_PROMPT, Turn, render_messages, system_message
from agentdistill.envs.registry import env_class
from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.models.base import Message
from agentdistill.store.models import Dataset, Episode, Step
from agentdistill.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    """One training sample: a chat and, per assistant message, the step it came from and whether it carries loss."""

    episode_id: int
    messages: list[Message]
    step_idx: list[int]  # per assistant message, in order
    train: list[bool]  # per assistant message


def episode_conversations(
    ep: Episode,
    window: int = 6,
    unit: str = "chunks",
    context: str | None = None,
    learn: Callable[[Step], bool] = lambda step: True,
    system_prompt: str = SYSTEM_PROMPT,
    sampled: bool = False,
) -> list[Conversation]:
    """Cut one stored episode (steps loaded) into conversations an LLM policy with history `window` would see.

    unit="chunks": consecutive turns in chats of `window + 1` agent turns, each turn trained once; a
      chunk's last turn sees exactly its rollout-time prompt, earlier turns a shorter history.
    unit="steps": one chat per step, loss on its last turn only: every turn sees exactly its
      rollout-time prompt (costs ~window times the tokens).
    `learn(step)` says which turns carry loss (e.g. only the student's turns after an expert prefix).
    `sampled=True` uses each step's raw model output as the agent message (what the student actually
    sampled, for on-policy losses) instead of the parsed thought/action.
    """
    if unit not in ("chunks", "steps"):
        raise ConfigError(f"unknown conversation unit {unit!r}: use chunks or steps")
    steps = sorted(ep.steps, key=lambda s: s.idx)
    if not steps:
        return []
    system = system_message(env_class(ep.task.env), system_prompt, context)
    goal = ep.task.goal or ""
    turns = [Turn(s.observation, s.action, s.thought, (s.raw_output or "").strip() or None if sampled else None)
             for s in steps]
    # the chat ending on turn t with window+1 turns equals the rollout prompt at t plus the action
    ends = list(range(len(steps))) if unit == "steps" else list(range(len(steps) - 1, -1, -(window + 1)))[::-1]
    out = []
    for t in ends:
        first = max(0, t - window)
        msgs = render_messages(system, goal, turns[: t + 1], None, window + 1)
        idx = [steps[i].idx for i in range(first, t + 1)]
        train = [learn(steps[i]) and (unit == "chunks" or i == t) for i in range(first, t + 1)]
        if any(train):
            out.append(Conversation(ep.id, msgs, idx, train))
    return out


def first_disagreement(steps: list[Step], labels: dict[int, Any]) -> int | None:
    """The idx of the first step whose executed action differs from its label (None: every label agrees)."""
    for st in steps:
        label = labels.get(st.idx)
        if label is not None and label.action.strip().lower() != st.action.strip().lower():
            return st.idx
    return None


def labelled_conversations(
    ep: Episode,
    labels: dict[int, Any],
    window: int = 6,
    mode: str = "all",
    system_prompt: str = SYSTEM_PROMPT,
) -> list[Conversation]:
    """DAgger's training chats from one rolled-out episode: at each labelled state, the exact prompt the acting
    policy saw (the executed earlier turns, as rendered at rollout) followed by the teacher's label as the agent
    turn, which alone carries loss. `labels`: step idx -> label (action, thought). mode "first_error": only the
    states up to the first one where the executed action differs from the label (the student's first mistake,
    corrected); later states come from a trajectory the teacher would not have taken and are not used."""
    if mode not in ("all", "first_error"):
        raise ConfigError(f"unknown label mode {mode!r}: use all or first_error")
    steps = sorted(ep.steps, key=lambda s: s.idx)
    if mode == "first_error":
        stop = first_disagreement(steps, labels)
        if stop is not None:
            steps = [s for s in steps if s.idx <= stop]
    system = system_message(env_class(ep.task.env), system_prompt)
    goal = ep.task.goal or ""
    executed = [Turn(s.observation, s.action, s.thought) for s in steps]
    out = []
    for t, st in enumerate(steps):
        label = labels.get(st.idx)
        if label is None:
            continue
        turns = executed[:t] + [Turn(st.observation, label.action, label.thought)]
        msgs = render_messages(system, goal, turns, None, window + 1)
        shown = min(len(turns), window + 1)
        idx = [steps[i].idx for i in range(t + 1 - shown, t + 1)]
        out.append(Conversation(ep.id, msgs, idx, [False] * (shown - 1) + [True]))
    return out


@dataclass
class Tokenized:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 on tokens that carry loss
    turn_ids: list[int] = field(default_factory=list)  # per token: index of its assistant message, -1 elsewhere


def _render(tokenizer, messages: list[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def agent_spans(tokenizer, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and, per assistant message, the character span the model must produce."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise AgentDistillError(
                "the tokenizer's chat template is not prefix-preserving (rendering a longer chat changes "
                "earlier text), so agent turns cannot be located: set a prefix-preserving chat_template "
                "on the tokenizer"
            )
        body = upto[len(prompt):].rstrip()  # content + end-of-turn token, without the trailing newline
        if m["content"] not in body:
            raise AgentDistillError(f"the chat template rewrites assistant messages (turn {i}); cannot mask agent turns")
        spans.append((len(prompt), len(prompt) + len(body)))
    return full, spans


def tokenize_conversation(tokenizer, conv: Conversation) -> Tokenized:
    if not getattr(tokenizer, "is_fast", False):
        raise AgentDistillError("agent-turn masking needs a fast tokenizer (tokenizer.json): re-save the model with one")
    text, spans = agent_spans(tokenizer, conv.messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask, turn_ids = [0] * len(ids), [-1] * len(ids)
    j = 0
    for turn, ((start, end), train) in enumerate(zip(spans, conv.train)):
        while j < len(ids) and offsets[j][0] < start:
            j += 1
        while j < len(ids) and offsets[j][0] < end:
            turn_ids[j] = turn
            mask[j] = int(train)
            j += 1
    return Tokenized(ids, mask, turn_ids)


# ---- datasets in the store ----------------------------------------------------------------------
@dataclass
class EpisodeFilter:
    role: str | None = "teacher"
    success: bool | None = True  # None: successful and failed
    env: str | None = None
    runs: list[str] | None = None
    split: str | None = None
    tasks: list[str] | None = None
    ids: list[int] | None = None  # only among these episodes (e.g. what a pipeline's collect stage produced)

    def select(self, store: Store) -> list[Episode]:
        """Matching finished episodes with their steps (not their model calls: prompts are big)."""
        ids = store.episode_ids(self.role, self.success, self.env, self.runs, self.split, self.tasks, self.ids)
        return store.episodes(ids=ids, with_steps=True, with_calls=False) if ids else []


def build_sft_dataset(
    store: Store,
    tokenizer,
    out: str | Path,
    filters: EpisodeFilter,
    window: int = 6,
    unit: str = "chunks",
    max_length: int = 2048,
    name: str | None = None,
) -> tuple[int, Any]:
    """Episodes matching `filters` -> a tokenized HF dataset saved at `out` and recorded in the store.

    Columns: input_ids, assistant_masks (what TRL's SFTTrainer turns into labels), episode_id,
    messages (JSON). Returns (dataset id, the dataset).
    """
    eps = filters.select(store)
    if not eps:
        raise AgentDistillError(
            f"no finished episodes match {_describe(filters)}: collect some first (`agentdistill collect`)"
        )
    convs = [conv for ep in eps for conv in episode_conversations(ep, window, unit)]
    ds, dropped = save_conversations(tokenizer, convs, out, max_length)
    meta = {**filters.__dict__, "window": window, "unit": unit, "max_length": max_length, "dropped": dropped,
            "tokenizer": getattr(tokenizer, "name_or_path", "")}
    dataset_id = record_dataset(store, name or Path(out).name, "sft", out, meta, [ep.id for ep in eps], len(ds))
    return dataset_id, ds


def save_conversations(tokenizer, convs: list[Conversation], out: str | Path, max_length: int = 2048) -> tuple[Any, int]:
    """Conversations -> a tokenized HF dataset written atomically at `out`; returns (dataset, chats dropped).

    Chats longer than `max_length` tokens are dropped (counted), never cut: a cut chat would train on a
    prompt the policy never sees."""
    import datasets

    rows: dict[str, list] = {"input_ids": [], "assistant_masks": [], "episode_id": [], "messages": []}
    dropped = 0
    for conv in convs:
        tok = tokenize_conversation(tokenizer, conv)
        if len(tok.input_ids) > max_length:
            dropped += 1
            continue
        rows["input_ids"].append(tok.input_ids)
        rows["assistant_masks"].append(tok.assistant_masks)
        rows["episode_id"].append(conv.episode_id)
        rows["messages"].append(json.dumps(conv.messages))
    if not rows["input_ids"]:
        raise AgentDistillError(f"every chat is longer than max_length={max_length} tokens: raise it or lower the window")
    if dropped:
        log.warning("dropped %d chats longer than %d tokens", dropped, max_length)
    ds = datasets.Dataset.from_dict(rows)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return ds, dropped


def record_dataset(store: Store, name: str, kind: str, path: str | Path, filters: dict[str, Any],
                   episode_ids: list[int], n_rows: int) -> int:
    with store.session() as s, s.begin():
        row = Dataset(name=name, kind=kind, path=str(Path(path).resolve()), filters=filters,
                      episode_ids=episode_ids, n_rows=n_rows)
        s.add(row)
        s.flush()
        return row.id


def load_dataset_ref(store: Store, ref: str) -> tuple[int | None, Any]:
    """A dataset by store id or by path -> (id or None, the HF dataset)."""
    import datasets

    with store.session() as s:
        row = s.get(Dataset, int(ref)) if ref.isdigit() else None
        path = Path(row.path) if row else Path(ref)
        dataset_id = row.id if row else None
        if row is None:
            from sqlalchemy import select

            dataset_id = s.scalar(select(Dataset.id).where(Dataset.path == str(path.resolve())))
    if not (path / "dataset_info.json").exists():
        raise AgentDistillError(f"no dataset at {path}: build one with `agentdistill train data`")
    return dataset_id, datasets.load_from_disk(str(path))


def _describe(f: EpisodeFilter) -> str:
    parts = [f"{k}={v}" if k != "ids" else f"{len(v)} listed episodes" for k, v in f.__dict__.items() if v is not None]
    return ", ".join(parts) or "no filters"
