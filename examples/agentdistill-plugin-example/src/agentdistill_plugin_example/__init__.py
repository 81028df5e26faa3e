"""Example agentdistill plugins (entry points in pyproject.toml): `counter` (an env with an expert), the
`repeat` and `rules` policies, and the `rules` distiller, which turns teacher episodes into a `rules` policy."""
