"""Promote: the gate that moves alias ``champion``.

A version passes when its data validation passed, its silhouette and bootstrap stability meet
the thresholds, and it is not worse than the current champion on the same data (both models
score the challenger's logged training rows, each in its own space: every row, or the seeded
sample its run kept when the data was above ``register.log_data_max_mb``). Passing moves ``champion``;
failing leaves it untouched and says why. With ``promote.require_approval`` passing makes the
version the ``candidate`` instead, pending a person's decision (`tasks.approval`).

The input contract (``SegmentationChain.input_contract``: feature names in order) is part of
the model: a challenger whose contract differs from the champion's would change what the
endpoint accepts, so it is refused unless the change is allowed (``--allow-contract-change``
or ``promote.allow_contract_change``); an allowed change is recorded in the reasons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks import notify
from tasks.approval import request_approval
from tasks.chain import SegmentationChain
from tasks.config import NotifyConfig, PromoteConfig
from tasks.register import (
    CHAMPION,
    alias_version,
    configure_mlflow,
    load_chain,
    load_training_rows,
    registry_lock,
)
from tasks.tracking import runs
from tasks.tracking.layout import CANDIDATE
from tasks.tracking.lock import DEFAULT_LEASE_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    model_name: str
    version: str
    passed: bool
    promoted: bool
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)
    previous_champion: str | None = None
    candidate: bool = False  # passed, waiting for approval (alias candidate)
    run_id: str | None = None


_NAMES_SHOWN = 10


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def contract_changes(champion: dict[str, Any], challenger: dict[str, Any]) -> list[str]:
    """How the challenger's input contract differs from the champion's, each part naming the
    features (added, removed, reordered); empty when they are equal."""
    old, new = list(champion["features"]), list(challenger["features"])
    # Which columns take raw text (format 2 categorical columns); absent: none.
    old_text, new_text = champion.get("categorical", []), challenger.get("categorical", [])
    retyped = sorted(
        name for name in set(old) & set(new) if (name in old_text) != (name in new_text)
    )
    if old == new and not retyped:
        return []
    changes = []
    if retyped:
        changes.append(f"changed numeric/categorical type of {_names(retyped)}")
    old_set, new_set = set(old), set(new)
    added = [name for name in new if name not in old_set]
    removed = [name for name in old if name not in new_set]
    if added:
        changes.append(f"added {_names(added)}")
    if removed:
        changes.append(f"removed {_names(removed)}")
    kept_old = [name for name in old if name in new_set]
    kept_new = [name for name in new if name in old_set]
    if kept_old != kept_new:
        moved = [a for a, b in zip(kept_old, kept_new, strict=True) if a != b]
        changes.append(
            f"reordered {_names(moved)} (champion order {_names(kept_old)}; "
            f"challenger order {_names(kept_new)})"
        )
    return changes


def chain_silhouette(chain: SegmentationChain, rows: np.ndarray, sample: int, seed: int) -> float:
    """Silhouette of a chain's own assignment of ``rows`` in its own space."""
    from sklearn.utils import check_random_state

    from tasks.compute import silhouette_score

    # Each row's centroid, a block of rows at a time: the chain's transform makes
    # temporaries the size of its input, and only the silhouette's sample is kept in its
    # space (the rows silhouette_score(..., sample_size, random_state) would draw).
    labels = np.empty(len(rows), dtype=np.int64)
    for start, _space, closest in chain.blocks_in_space(rows):
        labels[start : start + len(closest)] = closest
    if len(np.unique(labels)) < 2:
        return float("nan")
    if len(rows) > sample:
        chosen = check_random_state(seed).permutation(len(rows))[:sample]
        return float(silhouette_score(chain.transform(rows[chosen]), labels[chosen]))
    return float(silhouette_score(chain.transform(rows), labels))


def evaluate_gate(
    metrics: dict[str, float],
    validation_passed: bool,
    config: PromoteConfig,
    challenger: SegmentationChain | None = None,
    champion: SegmentationChain | None = None,
    rows: np.ndarray | None = None,
    sample: int = 5000,
    seed: int = 0,
    allow_contract_change: bool = False,
) -> tuple[bool, list[str], dict[str, Any]]:
    """Pure gate logic: (passed, reasons, the numbers checked)."""
    reasons: list[str] = []
    checks: dict[str, Any] = {"validation_passed": validation_passed}
    passed = True
    if not validation_passed:
        passed = False
        reasons.append("data validation did not pass")
    silhouette = metrics.get("silhouette", float("nan"))
    checks["silhouette"] = silhouette
    if not np.isfinite(silhouette) or silhouette < config.min_silhouette:
        passed = False
        reasons.append(
            f"silhouette {silhouette:.4f} < promote.min_silhouette {config.min_silhouette}"
        )
    else:
        reasons.append(f"silhouette {silhouette:.4f} >= {config.min_silhouette}")
    stability = metrics.get("stability", float("nan"))
    checks["stability"] = stability
    if np.isfinite(stability):
        if stability < config.min_stability:
            passed = False
            reasons.append(
                f"stability (bootstrap ARI) {stability:.3f} < promote.min_stability {config.min_stability}"
            )
        else:
            reasons.append(f"stability {stability:.3f} >= {config.min_stability}")
    else:
        reasons.append("stability not measured (evaluate.bootstrap_rounds=0)")
    if champion is None:
        reasons.append("no current champion")
    elif challenger is not None:
        changes = contract_changes(champion.input_contract(), challenger.input_contract())
        checks["contract_changes"] = changes
        if changes and not allow_contract_change:
            passed = False
            reasons.append(
                f"input contract differs from the champion's: {'; '.join(changes)} "
                "(--allow-contract-change or promote.allow_contract_change=true accepts it)"
            )
        elif changes:
            reasons.append(
                f"input contract change allowed: {'; '.join(changes)}; not comparable with "
                "the champion on the same data (comparison skipped)"
            )
        elif rows is None:
            # Not compared is not "not worse": the champion stays.
            passed = False
            reasons.append(
                "cannot compare with the champion on the same data: the challenger's run "
                "logged no training rows (register.log_data_max_mb too small for one row)"
            )
        else:
            ours = chain_silhouette(challenger, rows, sample, seed)
            theirs = chain_silhouette(champion, rows, sample, seed)
            checks["challenger_silhouette_same_data"] = ours
            checks["champion_silhouette_same_data"] = theirs
            if ours < theirs - config.max_silhouette_drop:
                passed = False
                reasons.append(
                    f"worse than the champion on the same data: silhouette {ours:.4f} vs "
                    f"{theirs:.4f} (allowed drop {config.max_silhouette_drop})"
                )
            else:
                reasons.append(
                    f"not worse than the champion on the same data: silhouette {ours:.4f} vs {theirs:.4f}"
                )
    return passed, reasons, checks


def promote(
    model_name: str,
    version: str | None,
    config: PromoteConfig,
    sample: int = 5000,
    seed: int = 0,
    lock_timeout_s: float = 600.0,
    allow_contract_change: bool | None = None,
    lock_lease_s: float = DEFAULT_LEASE_S,
    alerts: NotifyConfig | None = None,
) -> GateDecision:
    """Run the gate on a registered version (default: alias challenger); move champion if it
    passes. Under the registry lock: the champion compared against is still the champion
    when the alias moves. ``allow_contract_change`` None: ``config.allow_contract_change``.
    A refusal or a promotion is an alert (``alerts``: the notify settings), sent after the
    lock is released."""
    if allow_contract_change is None:
        allow_contract_change = config.allow_contract_change
    with registry_lock(lock_timeout_s, lock_lease_s):
        decision = _promote(model_name, version, config, sample, seed, allow_contract_change)
    notify.gate_decision(alerts, decision)
    return decision


def _logged_rows(record: runs.RunRecord, features: list[str]) -> np.ndarray | None:
    """The challenger's logged training rows (every row, or the seeded sample kept when the
    data was above ``register.log_data_max_mb``) as the chains receive them; None when its
    run logged none."""
    if not record.training_data_logged:
        return None
    return load_training_rows(record.run_id, features)


def _promote(
    model_name: str,
    version: str | None,
    config: PromoteConfig,
    sample: int,
    seed: int,
    allow_contract_change: bool,
) -> GateDecision:
    configure_mlflow()
    record = runs.read_version(model_name, version)
    version = record.version
    current = alias_version(model_name, CHAMPION)
    challenger_chain = champion_chain = rows = None
    if current is not None and current != version:
        champion_chain = load_chain(runs.model_version(model_name, current).run_id)
        challenger_chain = load_chain(record.run_id)
        rows = _logged_rows(record, challenger_chain.feature_names)
    if current == version:
        passed, reasons, checks = True, [f"version {version} is already the champion"], {}
        return GateDecision(
            model_name, version, True, False, reasons, checks, current, run_id=record.run_id
        )
    passed, reasons, checks = evaluate_gate(
        record.metrics,
        record.validation_passed,
        config,
        challenger_chain,
        champion_chain,
        rows,
        sample,
        seed,
        allow_contract_change,
    )
    approval = config.require_approval
    runs.record_gate(model_name, version, passed, reasons, current, move_champion=not approval)
    if passed and approval:
        displaced = request_approval(model_name, version)
        reasons.append(
            f"awaiting approval (promote.require_approval): alias {CANDIDATE}, champion "
            f"unchanged until `popseg approve {version}` or `popseg reject {version}`"
            + (f"; version {displaced} is no longer the candidate" if displaced else "")
        )
        logger.info("%s version %s is the candidate, awaiting approval", model_name, version)
        return GateDecision(
            model_name,
            version,
            True,
            False,
            reasons,
            checks,
            current,
            candidate=True,
            run_id=record.run_id,
        )
    if passed:
        logger.info("promoted %s version %s to %s", model_name, version, CHAMPION)
    else:
        logger.warning("gate failed for %s version %s: %s", model_name, version, "; ".join(reasons))
    return GateDecision(
        model_name, version, passed, passed, reasons, checks, current, run_id=record.run_id
    )
