"""Deploy wiring: which registered version, which target, rollback (batch scoring is
flows/scoring.py).

A deploy loads the version once (``load_release``: chain and smoke rows) and hands it to the
target looked up by name (``tasks.deploy.get_target``); nothing here depends on which target.
Plain functions rather than a Prefect flow: every `popseg deploy` would otherwise start
Prefect's ephemeral server (~13 s) for a handful of calls; the network steps retry through
botocore's retry policy, and each step's failure is a `DeployError` naming it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tasks import notify
from tasks.config import DeployConfig, Params
from tasks.deploy import get_target
from tasks.deploy.contract import (
    DeployResult,
    Release,
    Target,
    TargetOptions,
    load_release,
    validate_endpoint_name,
)
from tasks.errors import EndpointError, RegistryError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("flows.deploy")


def target_for(
    params: Params,
    target: str | None = None,
    port: int | None = None,
    capture: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
) -> Target:
    """The deploy target ``target`` (default: ``deploy.target``) with these options."""
    options = TargetOptions(
        port=port, capture=capture, region=region, bucket=bucket, role_arn=role_arn
    )
    return get_target(target or params.deploy.target, params.deploy, options)


def _serve(
    params: Params,
    step: Callable[[str, Release, bool], DeployResult],
    name: str,
    version: str | None,
    allow_contract_change: bool | None,
) -> DeployResult:
    """Load ``version`` once and hand it to a target's deploy or rollback."""
    if allow_contract_change is None:
        allow_contract_change = params.promote.allow_contract_change
    with tempfile.TemporaryDirectory(prefix="popseg-deploy-") as scratch:
        release = load_release(
            params.register_.model_name, version, scratch, params.deploy.smoke_rows
        )
        return step(name, release, allow_contract_change)


def deploy(
    params: Params,
    version: str | None = None,
    target: str | None = None,
    endpoint_name: str | None = None,
    capture: str | None = None,
    port: int | None = None,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
    allow_contract_change: bool | None = None,
) -> DeployResult:
    """Deploy a registered version (default: alias champion) and smoke-test it. A running
    endpoint whose model has another input contract is left as it is unless
    ``allow_contract_change`` (None: ``promote.allow_contract_change``, the setting that let
    the gate accept the change). A failure is a deploy_failed alert, then raised."""
    name = endpoint_name or params.deploy.endpoint_name
    where = target or params.deploy.target
    model = params.register_.model_name
    with notify.deploy_failures(params.notify, model, version, name, where):
        name = validate_endpoint_name(name)
        site = target_for(params, target, port, capture, region, bucket, role_arn)
        site.check()  # settings (and credentials) before anything is downloaded
        return _serve(params, site.deploy, name, version, allow_contract_change)


def check_target(
    params: Params,
    target: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
) -> None:
    """What a deploy to ``target`` needs (settings, credentials), before anything is loaded."""
    target_for(params, target, region=region, bucket=bucket, role_arn=role_arn).check()


def undeploy(
    params: Params, name: str, target: str | None = None, region: str | None = None
) -> dict[str, Any]:
    validate_endpoint_name(name)
    return target_for(params, target, region=region).undeploy(name)


def list_endpoints(
    params: Params, target: str | None = None, region: str | None = None
) -> list[dict[str, Any]]:
    """The endpoints of ``target`` (default: local)."""
    return target_for(params, target or "local", region=region).list()


def rollback(
    params: Params,
    name: str,
    target: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
    allow_contract_change: bool | None = None,
) -> dict[str, Any]:
    """Serve the previous version again and move alias ``champion`` back to it (a previous
    version with another input contract needs ``allow_contract_change``, as for deploy)."""
    from tasks.register import CHAMPION, alias_version, configure_mlflow, registry_lock
    from tasks.tracking import runs

    validate_endpoint_name(name)
    model_name = params.register_.model_name
    site = target_for(params, target, region=region, bucket=bucket, role_arn=role_arn)
    described = site.describe(name)
    current, previous = described.model_version, described.previous_version()
    configure_mlflow()
    if previous is None and current is not None:  # fall back on the promotion record
        try:
            previous = runs.read_version(model_name, current).gate.previous_champion
        except RegistryError:
            previous = None
    if previous is None:
        raise EndpointError(
            f"endpoint {name!r} serves version {current} and has no earlier version to roll back to"
        )
    result = _serve(params, site.rollback, name, previous, allow_contract_change)
    lock = params.orchestrate
    with registry_lock(lock.registry_lock_timeout_s, lock.registry_lock_lease_s):
        champion_before = alias_version(model_name, CHAMPION)
        runs.record_rollback(model_name, previous, champion_before)
    logger.info("rolled %s back from version %s to %s", name, current, previous)
    return {
        **result.to_json(),
        "rolled_back_from": current,
        "champion_before": champion_before,
        "champion": previous,
    }


def invoke_rows(
    name: str,
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    target: str = "local",
    region: str | None = None,
) -> list[dict[str, Any]]:
    """Send rows to a running endpoint through SageMaker's runtime call (the target's client),
    as every client must: raw values by request column (a table, or records), a categorical
    column's level as text, a missing value as null."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        rows = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    options = TargetOptions(region=region)
    return get_target(target, DeployConfig(), options).invoke(name, rows)
