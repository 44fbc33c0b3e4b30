"""The team stack on one machine (`popseg stack up|status|down`): PostgreSQL, an S3 store
(moto's server unless one is configured), `mlflow server` on PostgreSQL with its artifacts
proxied to S3, and `prefect server` on PostgreSQL with a `process` work pool, a worker and the
deployments of prefect.yaml.

One module a component (`postgres`, `s3`, `mlflow_server`, `prefect_stack`), the process
records and the state file in `processes`, and `lifecycle` bringing them up and down in order.
Everything lives under ``<project>/.popseg/stack/``. Operational code that starts and stops
services, like flows/prefect_server.py and flows/reaper.py whose helpers it reuses, so it lives
in flows/ (tasks/ never imports flows/).
"""
