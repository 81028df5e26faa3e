"""`agentdistill view`: a read-only web viewer over the store (runs, episode transcripts, skills,
evaluations, checkpoints, datasets). `create_app(store)` builds the FastAPI app; `serve` runs it."""
