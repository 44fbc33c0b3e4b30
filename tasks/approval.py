"""Human approval of a promotion (``promote.require_approval``).

With approval required, a version that passes the gate becomes the ``candidate`` (alias) with
tag ``approval=pending``; ``champion`` stays where it is. A person then decides:

- approve: ``champion`` moves to the candidate (its ``previous_champion`` tag names the one
  it replaced), ``candidate`` is cleared;
- reject: ``candidate`` is cleared, ``champion`` unchanged.

Either way the version records who (``$POPSEG_USER``, else user@host), when (UTC) and why
(:class:`ApprovalTag`). Every alias move happens under the registry lock, and a decision on a
version that is not the candidate, or already decided, or unknown is refused before anything
is written. Registry only: the paused retrain flow run is resumed by `flows.approval`.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tasks.errors import ApprovalError, ConfigError
from tasks.register import configure_mlflow, registry_lock
from tasks.tracking import runs
from tasks.tracking.layout import CANDIDATE, CHAMPION, ApprovalState, ApprovalTag, VersionTag
from tasks.tracking.lock import DEFAULT_LEASE_S

USER_VARIABLE = "POPSEG_USER"
Decision = Literal["approve", "reject"]
_STATE_OF = {"approve": ApprovalState.APPROVED, "reject": ApprovalState.REJECTED}


@dataclass(frozen=True)
class ApprovalRecord:
    """What a version's tags say about its approval (state None: approval never asked)."""

    state: str | None
    by: str | None = None
    at: str | None = None
    reason: str | None = None
    requested_at: str | None = None

    @classmethod
    def of(cls, version_tags: dict[str, str]) -> ApprovalRecord:
        return cls(
            state=version_tags.get(ApprovalTag.STATE),
            by=version_tags.get(ApprovalTag.BY),
            at=version_tags.get(ApprovalTag.AT),
            reason=version_tags.get(ApprovalTag.REASON),
            requested_at=version_tags.get(ApprovalTag.REQUESTED_AT),
        )

    @property
    def decided(self) -> bool:
        return self.state in (ApprovalState.APPROVED, ApprovalState.REJECTED)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ApprovalOutcome:
    model_name: str
    version: str
    decision: str  # approved | rejected
    by: str
    at: str
    reason: str
    champion_before: str | None
    champion: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def current_user() -> str:
    """Who decides: ``$POPSEG_USER`` when set, else user@host."""
    configured = os.environ.get(USER_VARIABLE, "").strip()
    if configured:
        return configured
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_approval(model_name: str, version: str) -> ApprovalRecord:
    configure_mlflow()
    return ApprovalRecord.of(dict(runs.model_version(model_name, version).tags or {}))


def request_approval(model_name: str, version: str) -> str | None:
    """Make ``version`` the candidate, pending a decision; returns the version it displaced
    as candidate (now ``superseded``), if any. The caller holds the registry lock (the gate)."""
    displaced = runs.alias_version(model_name, CANDIDATE)
    if displaced is not None and displaced != version:
        runs.tag_version(
            model_name,
            displaced,
            {
                ApprovalTag.STATE: ApprovalState.SUPERSEDED,
                ApprovalTag.AT: utc_now(),
                ApprovalTag.REASON: f"superseded by version {version}",
            },
        )
    # A version gated again starts a fresh request: an earlier decision's tags go.
    runs.delete_version_tags(
        model_name, version, (ApprovalTag.BY, ApprovalTag.AT, ApprovalTag.REASON)
    )
    runs.tag_version(
        model_name,
        version,
        {ApprovalTag.STATE: ApprovalState.PENDING, ApprovalTag.REQUESTED_AT: utc_now()},
    )
    runs.move_alias(model_name, CANDIDATE, version)
    return displaced if displaced != version else None


def decide(
    model_name: str,
    version: str,
    decision: Decision,
    reason: str | None = None,
    by: str | None = None,
    lock_timeout_s: float = 600.0,
    lock_lease_s: float = DEFAULT_LEASE_S,
) -> ApprovalOutcome:
    """Approve or reject the candidate ``version``; a reject needs a reason. Refused (an
    `ApprovalError` naming the version, nothing written) when it is not the candidate or
    was already decided; an unknown version is a `RegistryError`."""
    if decision not in _STATE_OF:
        raise ConfigError(f"decision {decision!r}: choose approve or reject")
    reason = (reason or "").strip()
    if decision == "reject" and not reason:
        raise ConfigError(f"reject version {version}: --reason is required (say why)")
    with registry_lock(lock_timeout_s, lock_lease_s):
        return _decide(model_name, str(version), decision, reason, by or current_user())


def _decide(
    model_name: str, version: str, decision: Decision, reason: str, by: str
) -> ApprovalOutcome:
    configure_mlflow()
    found = runs.model_version(model_name, version)  # RegistryError naming it when unknown
    record = ApprovalRecord.of(dict(found.tags or {}))
    if record.decided:
        raise ApprovalError(
            f"{model_name} version {version} was already {record.state} by {record.by} at "
            f"{record.at}; nothing changed"
        )
    candidate = runs.alias_version(model_name, CANDIDATE)
    if candidate != version:
        now = f"the candidate is version {candidate}" if candidate else "there is no candidate"
        why = (
            " (it passed no gate with promote.require_approval)"
            if record.state is None
            else f" ({record.reason})"
            if record.state == ApprovalState.SUPERSEDED
            else ""
        )
        raise ApprovalError(
            f"{model_name} version {version} is not the candidate{why}: {now}; nothing changed"
        )
    champion_before = runs.alias_version(model_name, CHAMPION)
    at = utc_now()
    if decision == "approve":
        # The alias first: a failure here leaves the version pending and candidate, so the
        # same command can be run again.
        runs.move_alias(model_name, CHAMPION, version)
    tags = {
        ApprovalTag.STATE: _STATE_OF[decision],
        ApprovalTag.BY: by,
        ApprovalTag.AT: at,
        ApprovalTag.REASON: reason,
    }
    if decision == "approve" and champion_before is not None and champion_before != version:
        tags[VersionTag.PREVIOUS_CHAMPION] = champion_before
    runs.tag_version(model_name, version, tags)
    runs.delete_alias(model_name, CANDIDATE)
    champion = version if decision == "approve" else champion_before
    return ApprovalOutcome(
        model_name, version, _STATE_OF[decision], by, at, reason, champion_before, champion
    )
