"""Pipeline recipes: collect -> distill -> eval -> report, run by `agentdistill run` (see run.py)."""

from agentdistill.pipeline.run import preflight, run_pipeline, stored_recipe

__all__ = ["preflight", "run_pipeline", "stored_recipe"]
