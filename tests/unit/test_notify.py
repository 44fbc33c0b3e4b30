"""tasks/notify.py against a real webhook receiver on 127.0.0.1: the documented JSON body,
retries on transient errors (5xx, 429 with Retry-After, connection refused), the total time
bound, one warning and no exception when nothing is delivered; the `notify` config checks."""

from __future__ import annotations

import logging
import time

import pytest

from tasks import notify
from tasks.config import NOTIFY_EVENTS, NOTIFY_URL_VARIABLE, NotifyConfig, load_params
from tasks.errors import ConfigError
from tests.webhook_receiver import Answer, closed_port_url, webhook_receiver

FAST = {"retry_backoff_s": 0.05, "timeout_s": 2.0, "max_total_s": 10.0}


def _settings(url: str, **changes) -> NotifyConfig:
    return NotifyConfig(webhook_url=url, **{**FAST, **changes})


def _warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "tasks.notify" and record.levelno >= logging.WARNING
    ]


class _Decision:
    """The fields `notify.gate_decision` reads, as `tasks.promote.GateDecision` has them."""

    def __init__(self, passed: bool, promoted: bool, reasons: list[str]):
        self.model_name, self.version, self.run_id = "popseg-segmentation", "3", "abc123"
        self.passed, self.promoted, self.reasons = passed, promoted, reasons
        self.previous_champion, self.checks = "2", {"silhouette": 0.21}


def test_payload_shape_and_escaping(caplog):
    refused = _Decision(
        False,
        False,
        ["silhouette 0.2100 < promote.min_silhouette 0.25", "stability 0.900 >= 0.6"],
    )
    with webhook_receiver() as receiver:
        assert notify.gate_decision(_settings(receiver.url), refused) is True
    (request,) = receiver.requests
    assert request["path"] == "/hooks/secret-token"
    assert request["content_type"] == "application/json"
    body = request["json"]
    assert tuple(body) == notify.PAYLOAD_KEYS
    assert body["event"] == "gate_refused" and body["source"] == "popseg"
    assert (body["model"], body["version"], body["run_id"]) == (
        "popseg-segmentation",
        "3",
        "abc123",
    )
    assert body["reasons"] == refused.reasons  # raw, every reason
    assert body["details"] == {
        "passed": False,
        "previous_champion": "2",
        "checks": {"silhouette": 0.21},
    }
    assert body["endpoint"] is None and body["error"] is None
    # Slack's escaping in text only; the failed check named, the passed one left out.
    assert body["text"] == (
        "popseg: gate refused popseg-segmentation version 3, champion unchanged: "
        "silhouette 0.2100 &lt; promote.min_silhouette 0.25"
    )
    assert body["sent_at"].endswith("+00:00")
    assert _warnings(caplog) == []


def test_events_filter_and_off():
    promoted = _Decision(True, True, ["silhouette 0.5 >= 0.25"])
    with webhook_receiver() as receiver:
        only_drift = _settings(receiver.url, events=["drift"])
        assert notify.gate_decision(only_drift, promoted) is False
        assert notify.gate_decision(NotifyConfig(), promoted) is False  # no channel: off
        assert notify.gate_decision(None, promoted) is False
        assert notify.gate_decision(_settings(receiver.url), promoted) is True
        waiting = _Decision(True, False, ["silhouette 0.5 >= 0.25"])  # e.g. awaiting approval
        assert notify.gate_decision(_settings(receiver.url), waiting) is False
    assert [body["event"] for body in receiver.payloads()] == ["promoted"]
    assert receiver.payloads()[0]["text"].endswith("promoted to champion (was version 2)")


def test_500_twice_then_200_is_delivered_once_after_retries(caplog):
    with webhook_receiver(Answer(500), Answer(503), Answer(200)) as receiver:
        started = time.monotonic()
        assert notify.approval_needed(_settings(receiver.url), "m", "4", "run4") is True
    assert [item["status"] for item in receiver.requests] == [500, 503, 200]
    (delivered,) = receiver.payloads()
    assert delivered["event"] == "approval_needed" and delivered["version"] == "4"
    # Backoff 0.05 then 0.1 s between the attempts.
    at = [item["at"] for item in receiver.requests]
    assert at[1] - at[0] >= 0.05 and at[2] - at[1] >= 0.1
    assert time.monotonic() - started < 5
    assert _warnings(caplog) == []


def test_429_retry_after_is_honoured_and_capped_by_the_total_time(caplog):
    with webhook_receiver(Answer(429, headers={"Retry-After": "1"})) as receiver:
        assert notify.train_failed(_settings(receiver.url), "m", "boom") is True
    first, second = receiver.requests
    assert second["at"] - first["at"] >= 1.0
    # A Retry-After beyond what notify.max_total_s leaves: no waiting, one warning.
    caplog.clear()
    with webhook_receiver(Answer(429, headers={"Retry-After": "120"})) as receiver:
        started = time.monotonic()
        assert notify.train_failed(_settings(receiver.url, max_total_s=3), "m", "boom") is False
    assert time.monotonic() - started < 2 and len(receiver.requests) == 1
    (warning,) = _warnings(caplog)
    assert "HTTP 429" in warning and "notify.max_total_s=3" in warning


def test_client_errors_are_not_retried(caplog):
    with webhook_receiver(Answer(404)) as receiver:
        assert notify.train_failed(_settings(receiver.url), "m", ValueError("x")) is False
    assert len(receiver.requests) == 1
    (warning,) = _warnings(caplog)
    assert "after 1 attempt(s): HTTP 404" in warning


def test_receiver_down_is_one_warning_and_no_exception(caplog):
    url = closed_port_url()
    started = time.monotonic()
    assert notify.train_failed(_settings(url, retries=2), "m", RuntimeError("x")) is False
    assert time.monotonic() - started < 5
    (warning,) = _warnings(caplog)
    assert "not delivered to http://127.0.0.1:" in warning and "after 3 attempt(s)" in warning
    assert "ConnectionRefusedError" in warning
    assert "secret-token" not in warning  # the URL's path (its secret) is not logged


def test_slow_receiver_is_bounded_by_the_timeout(caplog):
    slow = [Answer(200, delay_s=3.0)] * 3
    with webhook_receiver(*slow) as receiver:
        started = time.monotonic()
        settings = _settings(receiver.url, timeout_s=0.3, retries=5, max_total_s=1.0)
        assert notify.train_failed(settings, "m", "x") is False
        elapsed = time.monotonic() - started
    # Attempts of at most 0.3 s, all within max_total_s (1 s), then one warning.
    assert elapsed < 1.5
    assert 1 <= len(receiver.requests) <= 3
    (warning,) = _warnings(caplog)
    assert "no answer within" in warning and "notify.timeout_s" in warning


def test_deploy_failures_sends_and_reraises():
    with webhook_receiver() as receiver:
        settings = _settings(receiver.url)
        with pytest.raises(KeyError), notify.deploy_failures(settings, "m", "7", "ep", "local"):
            raise KeyError("no such thing")
        with notify.deploy_failures(settings, "m", "7", "ep", "local"):
            pass  # success: nothing sent
    (body,) = receiver.payloads()
    assert body["event"] == "deploy_failed" and body["endpoint"] == "ep"
    assert body["error"] == "'no such thing'"
    assert body["details"] == {"target": "local", "error_type": "KeyError", "exit_code": None}


def test_unknown_event_is_a_warning_not_an_error(caplog):
    assert notify.send(NotifyConfig(), "exploded", text="x") is False
    assert "unknown event 'exploded'" in _warnings(caplog)[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("notify.webhook_url=ftp://example.com/x", "notify.webhook_url: must be an http://"),
        ("notify.webhook_url=hooks.slack.com", "notify.webhook_url: must be an http://"),
        ("notify.events=[drift, drfit]", "notify.events: Input should be 'drift'"),
        ("notify.timeout_s=0", "notify.timeout_s: Input should be greater than 0"),
        ("notify.retries=-1", "notify.retries: Input should be greater than or equal to 0"),
        ("notify.prefect_block=Slack Block", "notify.prefect_block: must be block-type-slug/"),
        ("notify.colour=red", "unknown key notify.colour"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(project_dir, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as raised:
        load_params("params.yaml", [override])
    assert "Traceback" not in str(raised.value)


def test_url_from_the_environment_and_masked(project_dir, monkeypatch):
    assert load_params("params.yaml").notify.webhook_url is None  # off by default
    assert load_params("params.yaml").notify.events == list(NOTIFY_EVENTS)
    monkeypatch.setenv(NOTIFY_URL_VARIABLE, "https://hooks.example.com/T000/B000/XXXX")
    params = load_params("params.yaml")
    assert (
        params.notify.webhook_url.get_secret_value() == "https://hooks.example.com/T000/B000/XXXX"
    )
    # Logged params (MLflow) and JSON never show it.
    assert params.flat()["notify.webhook_url"] == "**********"
    assert "XXXX" not in str(params.to_dict())
    # --set wins over the environment: off for this run.
    assert load_params("params.yaml", ["notify.webhook_url="]).notify.webhook_url is None
    monkeypatch.setenv(NOTIFY_URL_VARIABLE, "not a url")
    with pytest.raises(ConfigError, match=f"with {NOTIFY_URL_VARIABLE}"):
        load_params("params.yaml")
    with pytest.raises(ConfigError, match="not both"):
        load_params(
            "params.yaml",
            ["notify.webhook_url=http://127.0.0.1:9/x", "notify.prefect_block=slack-webhook/a"],
        )
