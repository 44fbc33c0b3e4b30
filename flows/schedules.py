"""Scheduled work: the `train`, `retrain` and `monitor` deployments, with the cron schedules of
`params.yaml`'s `schedule` section. `popseg serve` serves them (starting a local Prefect server
when none is configured); `prefect.yaml` declares the same deployments for the work-pool way.

The deployment entry points take plain parameters (a params file and ``--set`` overrides, as
the CLI does) so a schedule, a worker and a person all start the same flows the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import orchestration
from flows.approval import wait_for_approval
from tasks.config import Params, load_params
from tasks.errors import ConfigError
from tasks.tracking.layout import ApprovalState

logger = logging.getLogger("flows.schedules")

DEPLOYMENTS = ("train", "retrain", "monitor")
PREFECT_YAML = "prefect.yaml"
WORK_POOL = "popseg"


def _params(params_path: str, overrides: list[str] | None) -> Params:
    return load_params(params_path, list(overrides or []))


def _monitor_data(params: Params, data_path: str | None) -> str:
    path = data_path or params.schedule.monitor_data
    if not path:
        raise ConfigError(
            "schedule.monitor_data: not set; name the new data to monitor (a file, s3:// URL or "
            "the endpoint's capture log), or pass data_path to the deployment"
        )
    return path


def _deploy_champion(params: Params, target: str) -> dict[str, Any]:
    from flows.deploy import deploy

    return deploy(params, target=target).to_json()


deploy_task = task(_deploy_champion, name="deploy-champion", cache_policy=NO_CACHE)


@flow(name="popseg-scheduled-train", log_prints=True)
def scheduled_train(params_path: str = "params.yaml", overrides: list[str] | None = None):
    """Train on the configured data, register, run the gate."""
    from flows.training import training_flow

    params = _params(params_path, overrides)
    outcome = training_flow.with_options(timeout_seconds=params.orchestrate.flow_timeout_s)(
        params, True
    )
    return outcome.to_json()


@flow(name="popseg-scheduled-monitor", log_prints=True)
def scheduled_monitor(
    params_path: str = "params.yaml",
    data_path: str | None = None,
    overrides: list[str] | None = None,
):
    """Drift of the new data against the champion, recorded in MLflow; never retrains."""
    from flows.monitoring import monitor_flow

    params = _params(params_path, overrides)
    return monitor_flow(params, _monitor_data(params, data_path)).to_json()


@flow(name="popseg-retrain", log_prints=True)
def scheduled_retrain(
    params_path: str = "params.yaml",
    data_path: str | None = None,
    overrides: list[str] | None = None,
):
    """monitor -> (drift) train on the new data -> gate -> deploy the new champion.

    With promote.require_approval the flow run pauses after the gate until the candidate is
    approved (deployed) or rejected (not), in the Prefect UI or with `popseg approve/reject`."""
    from flows.monitoring import monitor_flow

    params = _params(params_path, overrides)
    outcome = monitor_flow(params, _monitor_data(params, data_path), retrain=True)
    result: dict[str, Any] = {"monitor": outcome.to_json(), "approval": None, "deploy": None}
    if outcome.retrain_failed is not None:
        raise outcome.retrain_failed
    retrained = outcome.retrain or {}
    promoted = bool(retrained.get("promoted"))
    if retrained.get("approval") == ApprovalState.PENDING:
        # The gate has sent the "approval_needed" alert; wait for the decision.
        decision = wait_for_approval(
            params.register_.model_name,
            retrained["model_version"],
            params.promote.approval_timeout_s,
            retrained.get("gate_reasons"),
            params.orchestrate.registry_lock_timeout_s,
            params.orchestrate.registry_lock_lease_s,
        )
        result["approval"] = decision.to_json()
        promoted = decision.state == ApprovalState.APPROVED
    target = params.schedule.deploy_target
    if promoted and target != "none":
        deploy = deploy_task.with_options(**orchestration.network_options(params.orchestrate))
        result["deploy"] = deploy(params, target)
    return result


FLOWS = {"train": scheduled_train, "retrain": scheduled_retrain, "monitor": scheduled_monitor}


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str | None
    interval_s: float | None
    timezone: str


def schedules(
    params: Params,
    only: list[str] | None = None,
    every_s: float | None = None,
    data_path: str | None = None,
) -> list[Schedule]:
    """The deployments to serve: those with a cron in params (or all named in ``only``), each
    on its cron, or every ``every_s`` seconds when given (demos and tests). monitor and
    retrain need new data (``data_path`` or schedule.monitor_data); without it they are left
    out, or, when named in ``only``, an error."""
    names = list(only or DEPLOYMENTS)
    unknown = sorted(set(names) - set(DEPLOYMENTS))
    if unknown:
        raise ConfigError(f"--only {', '.join(unknown)}: choose from {', '.join(DEPLOYMENTS)}")
    has_data = bool(data_path or params.schedule.monitor_data)
    chosen = []
    for name in names:
        cron = getattr(params.schedule, name)
        if name != "train" and not has_data:
            if only:
                _monitor_data(params, None)  # raises, naming the key
            logger.warning("not serving %s: schedule.monitor_data is not set (or --data)", name)
            continue
        if cron is None and every_s is None and not only:
            continue
        if cron is None and every_s is None:
            raise ConfigError(f"schedule.{name}: no cron set; set one or pass --every SECONDS")
        chosen.append(Schedule(name, None if every_s else cron, every_s, params.schedule.timezone))
    if not chosen:
        raise ConfigError("schedule: every cron is null; nothing to serve")
    return chosen


def deployments(
    params_path: str,
    overrides: list[str],
    planned: list[Schedule],
    data_path: str | None = None,
):
    """Prefect deployment objects for `prefect.serve`."""
    from datetime import timedelta

    built = []
    for item in planned:
        parameters: dict[str, Any] = {"params_path": params_path, "overrides": overrides}
        if item.name != "train" and data_path:
            parameters["data_path"] = data_path
        options: dict[str, Any] = {"name": item.name, "parameters": parameters}
        if item.interval_s:
            options["interval"] = timedelta(seconds=item.interval_s)
        else:
            options["cron"] = item.cron
        built.append(FLOWS[item.name].to_deployment(**options))
    return built


def prefect_yaml(params: Params) -> str:
    """`prefect.yaml` for the work-pool way (`prefect deploy --all`), from params.yaml."""
    deployments_spec = []
    for name in DEPLOYMENTS:
        cron = getattr(params.schedule, name)
        entry: dict[str, Any] = {
            "name": name,
            "description": (FLOWS[name].description or "").strip().splitlines()[0],
            "entrypoint": f"flows/schedules.py:{FLOWS[name].fn.__name__}",
            "parameters": {"params_path": "params.yaml"},
            "work_pool": {"name": WORK_POOL},
            "schedules": (
                [{"cron": cron, "timezone": params.schedule.timezone, "active": True}]
                if cron
                else []
            ),
        }
        deployments_spec.append(entry)
    document = {
        "name": "popseg",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $POPSEG_PROJECT_DIR }}"
                }
            }
        ],
        "deployments": deployments_spec,
    }
    header = (
        "# Generated from params.yaml (section `schedule`) by `popseg serve --write-prefect-yaml`;\n"
        "# edit params.yaml, then regenerate. The work-pool way:\n"
        "#   prefect work-pool create popseg --type process\n"
        "#   POPSEG_PROJECT_DIR=$PWD prefect deploy --all\n"
        "#   POPSEG_PROJECT_DIR=$PWD prefect worker start --pool popseg\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


_ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")
RUNNER_STOP_S = 120.0


def serve_until_stopped(built, stop_timeout_s: float, limit: int = 1, notify=logger.info) -> str:
    """Serve deployments until SIGINT or SIGTERM, then stop in order: pause their schedules,
    let a running flow run finish (up to ``stop_timeout_s``; a second signal cuts the wait),
    cancel what still runs, stop the runner. Returns how it ended, in one line.

    Prefect's own `serve` exits from its SIGTERM handler (`sys.exit` inside the event loop:
    tracebacks, a flow run left "Running"); here the runner lives on a thread of its own and
    the main thread, which owns the signals, drives the shutdown through the API."""
    import asyncio
    import signal
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True, limit=limit)
    deployment_ids = [runner.add_deployment(deployment) for deployment in built]
    signals: list[int] = []
    wake = threading.Event()
    failure: list[BaseException] = []

    def on_signal(signum, frame):
        signals.append(signum)
        wake.set()

    def run_runner():
        try:
            asyncio.run(runner.start())
        except BaseException as error:  # reported by the main thread
            failure.append(error)
        finally:
            wake.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=run_runner, name="popseg-runner", daemon=True)
    try:
        thread.start()
        while not wake.wait(1.0):
            pass
        if not signals:
            if failure:
                raise failure[0]
            return "the runner stopped by itself"
        name = signal.Signals(signals[0]).name
        notify(f"{name}: schedules paused, no new flow run starts")
        with get_client(sync_client=True) as client:
            for deployment_id in deployment_ids:
                client.pause_deployment(deployment_id)
            waited = _wait_for_flow_runs(
                client, runner, deployment_ids, stop_timeout_s, signals, notify
            )
        # The runner cannot be stopped before it has started (a signal at start-up).
        deadline = time.monotonic() + RUNNER_STOP_S
        while not runner.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if thread.is_alive() and runner.started:
            # Cancels what still runs (flow runs end Cancelled), then ends runner.start().
            runner.execute_in_background(runner.astop).result(timeout=RUNNER_STOP_S)
        thread.join(timeout=RUNNER_STOP_S)
        # Logs still queued for the API go now, while the server that takes them is up.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        return f"{name}: {waited}"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _runner_processes(runner) -> int:
    """Flow-run processes the runner still tracks (one may outlive its final state by a
    moment: stopping the runner then would cancel a finished run). Private API of the pinned
    Prefect (3.8.8); 0 when it is not there."""
    manager = getattr(runner, "_process_manager", None)
    flow_run_ids = getattr(manager, "flow_run_ids", None)
    return len(flow_run_ids()) if callable(flow_run_ids) else 0


def _wait_for_flow_runs(
    client, runner, deployment_ids, timeout_s: float, signals: list[int], notify
) -> str:
    import time

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    def active() -> list:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType(s) for s in _ACTIVE_STATES])
                )
            ),
        )

    runs = active()
    if not runs and not _runner_processes(runner):
        return "no flow run was running"
    notify(
        f"waiting up to {timeout_s:g} s (schedule.stop_timeout_s) for flow run(s) "
        f"{', '.join(run.name for run in runs)} to finish; signal again to cancel now"
    )
    deadline = time.monotonic() + timeout_s
    while (runs or _runner_processes(runner)) and len(signals) < 2:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        runs = active()
    if not runs and not _runner_processes(runner):
        return "the running flow run finished"
    return f"flow run(s) {', '.join(run.name for run in runs)} cancelled"
