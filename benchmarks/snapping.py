"""How often action snapping fired on stored runs, and how often it changed the action's verb.

For every stored step of an LLM policy the model's own action is re-parsed from its raw output without
the admissible list and compared with the action that was sent: `snapped` = they differ, `verb changed`
= the first word differs (e.g. `go to kitchen` sent as `focus on kitchen`). Runs recorded before
snapping kept the verb show what the old rule did; runs after it must show 0 verb changes.

Run: python benchmarks/snapping.py --db agentdistill.db [--run RUN]
"""

import argparse
import os
from collections import Counter

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.agents.parsing import parse_action, verb  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", action="append")
    args = ap.parse_args()
    store = Store.open(args.db, create=False)
    counts: Counter = Counter()
    examples = []
    for ep in store.episodes(with_steps=True, with_calls=False):
        if args.run and ep.run_id not in args.run:
            continue
        for st in ep.steps:
            if not st.raw_output or st.answered_by in (None, "expert", "replay"):
                continue
            own = parse_action(st.raw_output, None).action
            counts["steps"] += 1
            if not own or own.lower() == st.action.lower():
                continue
            counts["snapped"] += 1
            if verb(own) != verb(st.action):
                counts["verb changed"] += 1
                if len(examples) < 5:
                    examples.append(f"{own!r} -> {st.action!r} ({ep.task.env}:{ep.task.name})")
    n = max(counts["steps"], 1)
    print(f"{counts['steps']} model steps: snapped {counts['snapped']} ({counts['snapped'] / n:.1%}), "
          f"verb changed {counts['verb changed']} ({counts['verb changed'] / n:.1%})")
    for e in examples:
        print("  " + e)


if __name__ == "__main__":
    main()
