"""Alerts: one message per pipeline event to a webhook (Slack-compatible JSON POST, any HTTP
receiver) or a Prefect notification block, as configured in params.yaml's ``notify`` section.

Every event goes through `send`, which never raises into its caller: an alert that cannot be
delivered is one warning in the log and the run's outcome is unchanged. Transient failures
(connection errors, timeouts, HTTP 408, 429 and 5xx) are retried with exponential backoff, a
429/503 ``Retry-After`` honoured, all within ``notify.max_total_s``. Delivery is at least once:
an attempt that timed out may have reached the receiver.

The JSON body (keep it stable; README "Alerts" documents it): ``text`` (one line for Slack,
``&``, ``<``, ``>`` escaped), ``event``, ``model``, ``version``, ``run_id``, ``endpoint``,
``reasons`` (list), ``error``, ``details`` (the event's own figures), ``source`` ("popseg"),
``sent_at`` (ISO 8601, UTC); every key is present in every event (null or empty when it does
not apply).

The event helpers below build each event's fields from what its call site has; each event has
one call site: drift (flows/monitoring.py), gate_refused and promoted (tasks/promote.py),
train_failed (the training flow's failure hook), deploy_failed (flows/deploy.py),
approval_needed and an approval's promoted (the approval step, with `approval_needed` and
`promoted`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from tasks.config import NOTIFY_EVENTS, NotifyConfig

logger = logging.getLogger(__name__)

PAYLOAD_KEYS = (
    "text",
    "event",
    "model",
    "version",
    "run_id",
    "endpoint",
    "reasons",
    "error",
    "details",
    "source",
    "sent_at",
)
_TRANSIENT_STATUS = {408, 429}
_REASONS_IN_TEXT = 3


def enabled(settings: NotifyConfig | None, event: str) -> bool:
    """Whether ``event`` would be sent: a channel is configured and the event is selected."""
    if settings is None or event not in settings.events:
        return False
    return settings.webhook_url is not None or settings.prefect_block is not None


def send(
    settings: NotifyConfig | None,
    event: str,
    *,
    text: str,
    model: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
    endpoint: str | None = None,
    reasons: Sequence[str] = (),
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> bool:
    """Send one alert; True when delivered, False when off, not selected or not delivered.
    Never raises: a failure is one warning."""
    try:
        if event not in NOTIFY_EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(NOTIFY_EVENTS)}")
        if not enabled(settings, event):
            return False
        payload = {
            "text": _slack_escape(" ".join(text.split())),
            "event": event,
            "model": model,
            "version": None if version is None else str(version),
            "run_id": run_id or None,
            "endpoint": endpoint,
            "reasons": [str(reason) for reason in reasons],
            "error": error,
            "details": details or {},
            "source": "popseg",
            "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if settings.prefect_block is not None:
            return _send_to_block(settings, payload)
        return _post(settings, payload)
    except Exception as failure:  # an alert must never change the run's outcome
        logger.warning("notify %s: not sent (%s: %s)", event, type(failure).__name__, failure)
        return False


def _slack_escape(text: str) -> str:
    """Slack reads ``<...>`` as links and ``&`` as entities in ``text``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _where(url: str) -> str:
    """The receiver without path or query: webhook URLs carry their secret there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _post(settings: NotifyConfig, payload: dict[str, Any]) -> bool:
    url = settings.webhook_url.get_secret_value()
    body = json.dumps(payload, default=str).encode()
    deadline = time.monotonic() + settings.max_total_s
    attempt = 0
    while True:
        attempt += 1
        timeout = max(min(settings.timeout_s, deadline - time.monotonic()), 0.01)
        problem, transient, retry_after = _attempt(url, body, timeout)
        if problem is None:
            logger.info("notify %s: delivered to %s", payload["event"], _where(url))
            return True
        if not transient or attempt > settings.retries:
            break
        delay = settings.retry_backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            delay = retry_after
        if time.monotonic() + delay >= deadline:
            problem += (
                f"; no time left for a retry within notify.max_total_s={settings.max_total_s:g}"
            )
            break
        logger.debug(
            "notify %s: attempt %d: %s; retrying in %.1f s",
            payload["event"],
            attempt,
            problem,
            delay,
        )
        time.sleep(delay)
    logger.warning(
        "notify %s: not delivered to %s after %d attempt(s): %s",
        payload["event"],
        _where(url),
        attempt,
        problem,
    )
    return False


def _attempt(url: str, body: bytes, timeout: float) -> tuple[str | None, bool, float | None]:
    """One POST: (problem or None when delivered, whether worth retrying, Retry-After s)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "popseg-notify"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return None, False, None
    except urllib.error.HTTPError as error:
        status = error.code
        transient = status in _TRANSIENT_STATUS or status >= 500
        retry_after = _retry_after(error.headers.get("Retry-After")) if transient else None
        return f"HTTP {status} {error.reason}", transient, retry_after
    except (urllib.error.URLError, OSError, HTTPException) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"no answer within {timeout:.3g} s (notify.timeout_s)", True, None
        return f"{type(reason).__name__}: {reason}", True, None


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def _send_to_block(settings: NotifyConfig, payload: dict[str, Any]) -> bool:
    """Through a saved Prefect notification block: the text as the body, ``popseg <event>`` as
    the subject; one attempt (the block does its own delivery), bounded by
    ``notify.max_total_s`` (loading the block goes through the Prefect API, whose client has
    retries of its own)."""
    import contextvars
    import threading

    outcome: list[BaseException | None] = []

    def deliver() -> None:
        from prefect.blocks.core import Block

        try:
            block = Block.load(settings.prefect_block)
            block.notify(payload["text"], subject=f"popseg {payload['event']}")
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    # The Prefect settings (API URL) of a flow run live in context variables.
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(deliver,), daemon=True)
    worker.start()
    worker.join(settings.max_total_s)
    event, block = payload["event"], settings.prefect_block
    if not outcome:
        problem = f"no answer within notify.max_total_s={settings.max_total_s:g}"
    elif outcome[0] is not None:
        problem = f"{type(outcome[0]).__name__}: {_one_line(outcome[0])}"
    else:
        logger.info("notify %s: sent through Prefect block %s", event, block)
        return True
    logger.warning("notify %s: not sent through Prefect block %s: %s", event, block, problem)
    return False


# --------------------------------------------------------------------------- the events


def _reasons_text(reasons: Sequence[str]) -> str:
    shown = "; ".join(reasons[:_REASONS_IN_TEXT])
    more = len(reasons) - _REASONS_IN_TEXT
    return shown + (f" (and {more} more)" if more > 0 else "")


def drift(settings: NotifyConfig | None, outcome: dict[str, Any]) -> bool:
    """Monitoring found drift (``outcome``: the monitoring outcome's JSON); nothing otherwise."""
    if not outcome.get("drift"):
        return False
    reasons = list(outcome.get("reasons", []))
    features = outcome.get("features", {})
    details = {
        "data_source": outcome.get("data_source"),
        "data_md5": outcome.get("data_md5"),
        "n_rows": outcome.get("n_rows"),
        "reference_run_id": outcome.get("reference_run_id"),
        "max_psi": outcome.get("max_psi"),
        "drifted_features": {
            name: figures.get("psi") for name, figures in features.items() if figures.get("drifted")
        },
        "segment_psi": outcome.get("segment_psi"),
        "distance": outcome.get("distance"),
    }
    model, version = outcome.get("model_name"), outcome.get("model_version")
    text = (
        f"popseg: drift in {details['data_source']} against {model} version {version} "
        f"({len(reasons)} reason(s)): {_reasons_text(reasons)}"
    )
    return send(
        settings,
        "drift",
        text=text,
        model=model,
        version=version,
        run_id=outcome.get("monitor_run_id"),
        reasons=reasons,
        details=details,
    )


def gate_decision(settings: NotifyConfig | None, decision: Any) -> bool:
    """The gate's decision (a `tasks.promote.GateDecision`): gate_refused when it failed,
    promoted when champion moved, approval_needed when it became the candidate (with
    promote.require_approval), nothing otherwise (already champion)."""
    details = {
        "passed": decision.passed,
        "previous_champion": decision.previous_champion,
        "checks": decision.checks,
    }
    fields = {
        "model": decision.model_name,
        "version": decision.version,
        "run_id": getattr(decision, "run_id", None),
        "reasons": decision.reasons,
        "details": details,
    }
    name = f"{decision.model_name} version {decision.version}"
    if not decision.passed:
        refused = [reason for reason in decision.reasons if _is_refusal(reason)]
        refused = refused or list(decision.reasons)
        text = f"popseg: gate refused {name}, champion unchanged: {_reasons_text(refused)}"
        return send(settings, "gate_refused", text=text, **fields)
    if getattr(decision, "candidate", False):
        return approval_needed(
            settings, decision.model_name, decision.version, fields["run_id"], decision.reasons
        )
    if decision.promoted:
        return promoted(
            settings,
            decision.model_name,
            decision.version,
            decision.previous_champion,
            fields["run_id"],
            decision.reasons,
            decision.checks,
        )
    return False


def promoted(
    settings: NotifyConfig | None,
    model: str,
    version: str,
    previous_champion: str | None,
    run_id: str | None = None,
    reasons: Sequence[str] = (),
    checks: dict[str, Any] | None = None,
) -> bool:
    """Alias champion moved to ``version`` (by the gate, or by a person's approval)."""
    text = (
        f"popseg: {model} version {version} promoted to champion "
        f"(was version {previous_champion or 'none'})"
    )
    details = {"passed": True, "previous_champion": previous_champion, "checks": checks or {}}
    return send(
        settings,
        "promoted",
        text=text,
        model=model,
        version=version,
        run_id=run_id,
        reasons=reasons,
        details=details,
    )


def _is_refusal(reason: str) -> bool:
    """The gate's reasons list passed checks too; the text names the failed ones."""
    passed = (">=", "no current champion", "not worse", "stability not measured", "allowed")
    return not any(marker in reason for marker in passed)


def approval_needed(
    settings: NotifyConfig | None,
    model: str,
    version: str,
    run_id: str | None = None,
    reasons: Sequence[str] = (),
) -> bool:
    """A version passed the gate and waits for a person (alias candidate)."""
    text = (
        f"popseg: {model} version {version} passed the gate and waits for approval: "
        f"`popseg approve {version}` or `popseg reject {version} --reason ...`"
    )
    return send(
        settings,
        "approval_needed",
        text=text,
        model=model,
        version=version,
        run_id=run_id,
        reasons=reasons,
        details={"approve": f"popseg approve {version}", "reject": f"popseg reject {version}"},
    )


def train_failed(
    settings: NotifyConfig | None,
    model: str,
    error: BaseException | str,
    data: str | None = None,
    flow_run: dict[str, Any] | None = None,
) -> bool:
    """A training run failed: the error's one-line message."""
    message = _one_line(error)
    details = {
        "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
        "exit_code": getattr(error, "exit_code", None),
        "data": data,
        "flow_run": flow_run or {},
    }
    text = f"popseg: training of {model}{f' on {data}' if data else ''} failed: {message}"
    return send(settings, "train_failed", text=text, model=model, error=message, details=details)


@contextlib.contextmanager
def deploy_failures(
    settings: NotifyConfig | None,
    model: str,
    version: str | None,
    endpoint: str | None,
    target: str,
) -> Iterator[None]:
    """Sends deploy_failed when the block raises, then lets the error go on."""
    try:
        yield
    except Exception as error:
        message = _one_line(error)
        shown = f"version {version}" if version else "the champion"
        send(
            settings,
            "deploy_failed",
            text=f"popseg: deploy of {model} {shown} to {target} endpoint {endpoint} failed: {message}",
            model=model,
            version=version,
            endpoint=endpoint,
            error=message,
            details={
                "target": target,
                "error_type": type(error).__name__,
                "exit_code": getattr(error, "exit_code", None),
            },
        )
        raise


def _one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split()) or type(error).__name__
