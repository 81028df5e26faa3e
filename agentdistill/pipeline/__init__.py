"""Pipeline recipes: collect -> distill -> eval -> report, run by `agentdistill run` (see run.py)."""

from agentdistill.pipeline.run import run_pipeline, stored_recipe

__all__ = ["run_pipeline", "stored_recipe"]
