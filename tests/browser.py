"""Headless Chromium (Debian's `chromium`) for the tests that render pages: the HTML report,
the MLflow UI, the Prefect UI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_INSTALL = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends chromium"
)


def chromium() -> str:
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if path is None:
        pytest.fail(
            "headless Chromium is needed to test rendered pages and is not installed; run the "
            f"install step of .ci/run (as root: {CHROMIUM_INSTALL})"
        )
    return path


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rendered_text(browser: str, profile: Path, url: str, budget_ms: int = 15000) -> str:
    """The visible text of ``url`` once its scripts have run (``--dump-dom`` after a virtual
    time budget), tags, styles and scripts dropped, white space collapsed."""
    result = run_chromium(browser, profile, "--dump-dom", f"--virtual-time-budget={budget_ms}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
