"""Code that prepares a Prefect server for this project's deployments and serves them
locally: `python -m flows.deploy init` (work pool, fleet size, crash detection) and
`python -m deployments.serve` (the deployments in one process, no work pool)."""
