"""Deploy wiring: which registered version, which target, smoke rows, rollback, batch scoring.

Plain functions rather than a Prefect flow: every `popseg deploy` would otherwise start
Prefect's ephemeral server (~13 s) for a handful of calls; the network steps retry through
botocore's retry policy, and each step's failure is a `DeployError` naming it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks import deploy as local
from tasks.config import Params
from tasks.errors import DeployError, EndpointError, RegistryError
from tasks.package import RegisteredChain, fetch_registered_chain

logger = logging.getLogger("flows.deploy")

TARGETS = ("local", "sagemaker")


def _sample_rows(registered: RegisteredChain, n: int) -> np.ndarray | None:
    """The first ``n`` training rows of the version's run (None when not logged)."""
    from tasks.chain import SegmentationChain
    from tasks.register import load_training_frame

    try:
        frame = load_training_frame(registered.run_id)
    except RegistryError:
        return None
    chain = SegmentationChain.load(str(registered.chain_dir))
    return local.smoke_rows(chain, frame, n)


def _region(params: Params, region: str | None) -> str:
    import os

    found = (
        region
        or params.deploy.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not found:
        raise DeployError(
            "sagemaker needs a region (--region, deploy.region or AWS_DEFAULT_REGION)"
        )
    return found


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
) -> local.DeployResult:
    """Deploy a registered version (default: alias champion) and smoke-test it. A running
    endpoint whose model has another input contract is left as it is unless
    ``allow_contract_change`` (None: ``promote.allow_contract_change``, the setting that let
    the gate accept the change)."""
    config = params.deploy
    target = target or config.target
    name = local.validate_endpoint_name(endpoint_name or config.endpoint_name)
    if allow_contract_change is None:
        allow_contract_change = params.promote.allow_contract_change
    if target not in TARGETS:
        raise DeployError(f"--target {target!r}: choose local or sagemaker")
    if target == "local" and (capture or config.capture or "").startswith("s3://"):
        raise DeployError(
            f"deploy.capture {capture or config.capture!r}: the local endpoint appends to a "
            "local file; an s3:// capture is for --target sagemaker"
        )
    with tempfile.TemporaryDirectory(prefix="popseg-deploy-") as scratch:
        registered = fetch_registered_chain(params.register_.model_name, version, scratch)
        sample = _sample_rows(registered, config.smoke_rows)
        if target == "local":
            return local.deploy_local(
                name,
                registered,
                sample=sample,
                port=config.port if port is None else port,
                capture=capture or config.capture,
                limits=local.ServerLimits.from_config(config),
                start_timeout_s=config.start_timeout_s,
                allow_contract_change=allow_contract_change,
            )
        from tasks import sagemaker

        settings = sagemaker.resolve_settings(config, region, bucket, role_arn)
        if capture:
            config = config.model_copy(update={"capture": capture})
        return sagemaker.deploy_sagemaker(
            name, registered, config, settings, sample, allow_contract_change
        )


def undeploy(
    params: Params, name: str, target: str | None = None, region: str | None = None
) -> dict[str, Any]:
    local.validate_endpoint_name(name)
    target = target or params.deploy.target
    if target == "local":
        return local.undeploy_local(name)
    from tasks import sagemaker

    return sagemaker.undeploy_sagemaker(name, _region(params, region))


def list_endpoints(
    params: Params, target: str | None = None, region: str | None = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if target in (None, "local"):
        rows += local.list_local()
    if target == "sagemaker":
        from tasks import sagemaker

        rows += sagemaker.list_sagemaker(_region(params, region))
    return rows


def _previous(history: list[str], current: str | None) -> str | None:
    """The version served before ``current`` (skipping repeats of ``current``)."""
    for version in reversed(history):
        if version != current:
            return version
    return None


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
    import mlflow

    from tasks.register import CHAMPION, alias_version, configure_mlflow, registry_lock

    local.validate_endpoint_name(name)
    target = target or params.deploy.target
    model_name = params.register_.model_name
    if target == "local":
        state = local.read_state(name)
        if state is None:
            raise EndpointError(f"no local endpoint named {name!r} (see `popseg endpoints`)")
        current = state.model_version
        history = [entry["model_version"] for entry in state.history]
    else:
        from tasks import sagemaker

        current, history = sagemaker.endpoint_versions(name, _region(params, region))
    previous = _previous(history, current)
    configure_mlflow()
    client = mlflow.MlflowClient()
    if previous is None and current is not None:  # fall back on the promotion record
        try:
            tags = client.get_model_version(model_name, current).tags
        except Exception:
            tags = {}
        previous = tags.get("previous_champion")
    if previous is None:
        raise EndpointError(
            f"endpoint {name!r} serves version {current} and has no earlier version to roll back to"
        )
    result = deploy(
        params,
        version=previous,
        target=target,
        endpoint_name=name,
        region=region,
        bucket=bucket,
        role_arn=role_arn,
        allow_contract_change=allow_contract_change,
    )
    with registry_lock(params.orchestrate.registry_lock_timeout_s):
        champion_before = alias_version(model_name, CHAMPION)
        client.set_registered_model_alias(model_name, CHAMPION, previous)
        if champion_before is not None and champion_before != previous:
            client.set_model_version_tag(model_name, previous, "rolled_back_from", champion_before)
    logger.info("rolled %s back from version %s to %s", name, current, previous)
    return {
        **result.to_json(),
        "rolled_back_from": current,
        "champion_before": champion_before,
        "champion": previous,
    }


def invoke_rows(name: str, rows: np.ndarray) -> list[dict[str, Any]]:
    """Send rows to a running local endpoint through the boto3 sagemaker-runtime client."""
    state = local.local_endpoint(name)
    answer = local.invoke(local.runtime_client(state.url), name, local.rows_to_csv(rows))
    return answer["predictions"]


def score(params: Params, data: str, output: str, version: str | None = None) -> dict[str, Any]:
    """Batch scoring with a registered version (default: alias champion)."""
    from tasks.chain import SegmentationChain
    from tasks.score import score_frame, write_scores

    with tempfile.TemporaryDirectory(prefix="popseg-score-") as scratch:
        registered = fetch_registered_chain(params.register_.model_name, version, scratch)
        chain = SegmentationChain.load(str(registered.chain_dir))
    scores = score_frame(chain, data, params.data.delimiter)
    path = write_scores(scores, output)
    return {
        "model_name": registered.model_name,
        "model_version": registered.model_version,
        "rows": len(scores),
        "output": str(Path(path)),
        "segments": {int(k): int(v) for k, v in scores["segment"].value_counts().items()},
    }
