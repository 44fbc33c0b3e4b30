"""`notify.prefect_block`: an alert through a saved Prefect notification block (a custom
webhook block on the session's Prefect test server, posting to a real receiver); a block that
does not exist is one warning and no exception."""

from __future__ import annotations

import logging

from tasks import notify
from tasks.config import NotifyConfig
from tests.webhook_receiver import webhook_receiver


def test_alert_through_a_prefect_block(prefect_server, caplog):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    with webhook_receiver() as receiver:
        block = CustomWebhookNotificationBlock(
            name="popseg-alerts",
            url=receiver.url,
            json_data={"text": "{{body}}", "subject": "{{subject}}"},
        )
        block.save("popseg-alerts", overwrite=True)
        settings = NotifyConfig(prefect_block="custom-webhook/popseg-alerts")
        assert notify.train_failed(settings, "popseg-segmentation", "disk < full") is True
    assert receiver.payloads() == [
        {
            "text": "popseg: training of popseg-segmentation failed: disk &lt; full",
            "subject": "popseg train_failed",
        }
    ]

    missing = NotifyConfig(prefect_block="custom-webhook/no-such-block")
    assert notify.train_failed(missing, "popseg-segmentation", "x") is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    notify_warnings = [w for w in warnings if w.startswith("notify train_failed")]
    assert len(notify_warnings) == 1
    assert "not sent through Prefect block custom-webhook/no-such-block" in notify_warnings[0]
