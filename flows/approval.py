"""Approval through Prefect: the scheduled retrain flow run waits for a person's decision on
its candidate version with Prefect's pause-with-input, so the question shows (and can be
answered) in the Prefect UI; `popseg approve` / `popseg reject` record the decision in the
registry (`tasks.approval`) and resume the flow run waiting for that version.

The waiting flow run carries the tag ``popseg-approval:<model>:v<version>``, which is how the
commands find it (``PAUSED`` flow runs with that tag) on the Prefect API in use: Prefect's own
setting (``PREFECT_API_URL``), else the server `popseg serve` started, recorded in
``.popseg/prefect-api.json``. With neither, no Prefect server is started for it: the decision
is recorded and the commands say that no flow run was resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks import approval, notify
from tasks.config import NotifyConfig
from tasks.errors import ApprovalError
from tasks.tracking.layout import CANDIDATE
from tasks.tracking.lock import DEFAULT_LEASE_S

logger = logging.getLogger("flows.approval")

TAG_PREFIX = "popseg-approval"
# How often the paused flow run asks the Prefect API whether it was resumed.
POLL_S = 2


def approval_tag(model_name: str, version: str) -> str:
    return f"{TAG_PREFIX}:{model_name}:v{version}"


def _input_class():
    """The form the Prefect UI shows on the paused flow run (pydantic, via RunInput)."""
    from prefect.input import RunInput

    class ApprovalInput(RunInput):
        decision: Literal["approve", "reject"]
        reason: str = ""
        approver: str = ""

    return ApprovalInput


def _description(model_name: str, version: str, gate_reasons: list[str]) -> str:
    lines = [
        f"**{model_name} version {version}** passed the promotion gate and is the "
        f"`{CANDIDATE}`; champion is unchanged until it is approved.",
        "",
        *[f"- {reason}" for reason in gate_reasons],
        "",
        "Choose *approve* (moves champion, then deploys) or *reject* (champion unchanged, "
        "nothing deployed), with a reason. Same as `popseg approve "
        f"{version} --reason ...` / `popseg reject {version} --reason ...`.",
    ]
    return "\n".join(lines)


def wait_for_approval(
    model_name: str,
    version: str,
    timeout_s: int,
    gate_reasons: list[str] | None = None,
    lock_timeout_s: float = 600.0,
    lock_lease_s: float = DEFAULT_LEASE_S,
) -> approval.ApprovalRecord:
    """Inside a flow run: tag it, pause it until the candidate ``version`` is decided (by
    `popseg approve/reject`, or in the Prefect UI, whose answer is recorded here), and return
    the decision. Not decided within ``timeout_s``: an `ApprovalError` (the version stays the
    candidate; the flow run ends Failed, as Prefect ends an expired pause)."""
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("wait_for_approval runs inside a flow run")
    flow_run = context.flow_run
    _add_tag(flow_run.id, approval_tag(model_name, version))
    record = approval.read_approval(model_name, version)
    if record.decided:  # decided between the gate and this pause
        return record
    form = _input_class().with_initial_data(
        description=_description(model_name, version, gate_reasons or []), decision="approve"
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=timeout_s,
            poll_interval=min(POLL_S, timeout_s),
            key=f"approval-v{version}",
        )
    except FlowPauseTimeout:
        raise ApprovalError(
            f"{model_name} version {version} was not approved or rejected within "
            f"promote.approval_timeout_s={timeout_s} s; it stays the {CANDIDATE} "
            f"(`popseg approve {version}` moves champion, then deploy it); nothing deployed"
        ) from None
    record = approval.read_approval(model_name, version)
    if record.decided:  # popseg approve/reject recorded it, then resumed this run
        return record
    # Answered in the Prefect UI: record it here, as the command would.
    reason = answer.reason.strip() or f"{answer.decision} in the Prefect UI (no reason given)"
    by = answer.approver.strip() or f"prefect-ui (flow run {flow_run.name})"
    approval.decide(model_name, version, answer.decision, reason, by, lock_timeout_s, lock_lease_s)
    return approval.read_approval(model_name, version)


def _add_tag(flow_run_id, tag: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tags = list(client.read_flow_run(flow_run_id).tags or [])
        if tag not in tags:
            client.update_flow_run(flow_run_id, tags=[*tags, tag])


@dataclass
class DecisionResult:
    """A decision recorded in the registry and the flow runs it resumed."""

    outcome: approval.ApprovalOutcome
    prefect_api: str | None = None
    resumed_flow_runs: list[str] = field(default_factory=list)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.outcome.to_json(),
            "prefect_api": self.prefect_api,
            "resumed_flow_runs": list(self.resumed_flow_runs),
            "note": self.note,
        }


def decide(
    model_name: str,
    version: str,
    decision: approval.Decision,
    reason: str | None,
    lock_timeout_s: float = 600.0,
    alerts: NotifyConfig | None = None,
    lock_lease_s: float = DEFAULT_LEASE_S,
) -> DecisionResult:
    """`popseg approve` / `popseg reject`: record the decision (refused decisions write
    nothing; an approval is a ``promoted`` alert), then resume the retrain flow run paused
    waiting for that version, if any."""
    outcome = approval.decide(
        model_name, version, decision, reason, None, lock_timeout_s, lock_lease_s
    )
    if outcome.decision == "approved" and outcome.champion_before != outcome.version:
        notify.promoted(
            alerts, model_name, outcome.version, outcome.champion_before, reasons=[outcome.reason]
        )
    api = prefect_api_url()
    if api is None:
        return DecisionResult(
            outcome,
            note="no Prefect API configured (PREFECT_API_URL), recorded by `popseg serve` or "
            "kept for the project: no paused flow run looked for",
        )
    run_input = {"decision": decision, "reason": outcome.reason, "approver": outcome.by}
    try:
        resumed = resume_waiting(api, approval_tag(model_name, outcome.version), run_input)
    except Exception as error:  # the decision stands; the flow run can be resumed in the UI
        logger.warning("could not resume the waiting flow run on %s: %s", api, error)
        return DecisionResult(outcome, api, note=f"Prefect API {api}: {error}")
    return DecisionResult(outcome, api, resumed)


def prefect_api_url() -> str | None:
    """The Prefect API to look for waiting flow runs on: Prefect's setting, else the server
    `popseg serve` recorded (when it still answers), else the project's kept server (a
    `popseg run` waiting for approval pauses there); never a per-command one."""
    from flows.prefect_keeper import running_api_url
    from flows.prefect_server import recorded_api_url

    configured = _configured_api_url()
    return configured or recorded_api_url() or running_api_url()


def _configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def resume_waiting(api_url: str, tag: str, run_input: dict[str, Any]) -> list[str]:
    """Resume every PAUSED flow run tagged ``tag`` with ``run_input``; their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            waiting = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[tag]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                )
            )
        for flow_run in waiting:
            resume_flow_run(flow_run.id, run_input=run_input)
            logger.info("resumed flow run %s (%s)", flow_run.name, flow_run.id)
    return [flow_run.name for flow_run in waiting]
