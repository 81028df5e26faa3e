"""The report stage: the efficacy table of the eval stages, stored in `evaluations` (and written as HTML /
JSON when the recipe's [report] asks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentdistill.config import Recipe
from agentdistill.pipeline.run import StageContext, StageDef


def stage(recipe: Recipe) -> StageDef:
    arms = [f"eval.{a}" for a in recipe.arm_names()]
    config = recipe.report.model_dump(mode="json") if recipe.report else {}
    return StageDef("report", "report", config, arms, run, summary=lambda o: f"evaluation {o.get('evaluation_id')}")


def run(ctx: StageContext) -> dict[str, Any]:
    from agentdistill.report import efficacy

    # the pipeline run being executed is the one whose stages hold the arms' runs
    report = efficacy.build(ctx.store, ctx.run_id)
    out: dict[str, Any] = {"evaluation_id": report["evaluation_id"]}
    spec = ctx.recipe.report
    if spec and spec.html:
        from agentdistill.report.html import write_html

        out["html"] = str(write_html(report, Path(spec.html)))
    if spec and spec.json_path:
        path = Path(spec.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
        out["json"] = str(path)
    return out
