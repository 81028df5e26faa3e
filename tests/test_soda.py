"""SODA's preference data: chats longer than max_length are dropped (never truncated), the rest kept.

A unit test on the real SmolLM2 tokenizer; the whole SODA stage runs in tests/test_pipeline.py.
"""

from __future__ import annotations

import pytest

from agentdistill.store.store import Store
from agentdistill.train import soda

transformers = pytest.importorskip("transformers", reason="pip install 'agentdistill[train]'")


def test_chats_longer_than_max_length_are_dropped_by_their_token_count(tmp_path, monkeypatch):
    from agentdistill.models.local import resolve_checkpoint

    tok = transformers.AutoTokenizer.from_pretrained(str(resolve_checkpoint("smollm2-135m")))
    short = [{"role": "system", "content": "act"}, {"role": "user", "content": "a room"}]
    long = [{"role": "system", "content": "act"}, {"role": "user", "content": "a very long room " * 200}]
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": "Action: look"}],
             "rejected": [{"role": "assistant", "content": "hello"}], "episode_id": i, "step_idx": 0}
            for i, p in enumerate([short, long, short])]
    monkeypatch.setattr(soda, "preference_rows", lambda store, ids, spec: (rows, {"states": 3, "agreed": 0, "pairs": 3}))
    store = Store.open(str(tmp_path / "s.db"))
    n_long = len(tok.apply_chat_template(long + rows[1]["chosen"], tokenize=True, return_dict=False))
    assert n_long > 600  # the long chat really is long in tokens (not in the tokenizer's dict keys)
    _, ds, stats = soda.build_preference_dataset(store, [0, 1, 2], tmp_path / "pairs", soda.SODASpec(max_length=512), tok)
    assert stats["dropped_long"] == 1 and len(ds) == 2 and sorted(ds["episode_id"]) == [0, 2]
    _, ds, stats = soda.build_preference_dataset(store, [0, 1, 2], tmp_path / "pairs", soda.SODASpec(max_length=4096), tok)
    assert stats["dropped_long"] == 0 and len(ds) == 3
