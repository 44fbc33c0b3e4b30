"""The endpoint's capture log (issue 13, "Capture"): bounded by size with rotation, files
0600, refused requests recorded as metadata only, and `popseg monitor` still reads it all."""

from __future__ import annotations

import json
import stat
import time

import numpy as np

from tasks.chain import SegmentationChain
from tasks.monitor import read_monitor_data
from tests.reliability import endpoint_process
from tests.reliability.endpoint_process import NAME, ROW

model_dir = endpoint_process.model_dir
endpoint_factory = endpoint_process.endpoint_factory

INVOKE = f"/endpoints/{NAME}/invocations"
MARKER = b"SECRET-BODY-MARKER"


def _records(paths) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def _wait_lines(path, count: int) -> None:
    """Records are appended after the answer is sent (as SageMaker's capture): wait for them,
    in the file and the ones it rotated to."""

    def lines() -> int:
        count = 0
        for file in path.parent.glob(path.name + "*"):
            try:  # the server may rotate a listed file away before it is read
                count += len(file.read_bytes().splitlines())
            except FileNotFoundError:
                return -1
        return count

    deadline = time.monotonic() + 10
    while lines() < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_capture_rotates_at_its_size_keeps_n_files_mode_0600(endpoint_factory):
    served = endpoint_factory("--capture-max-bytes", "4096", "--capture-keep", "2", capture=True)
    for _ in range(40):  # ~1 KB per record: ~10 files' worth, 3 kept
        assert served.post(INVOKE, ROW)[0] == 200
    time.sleep(0.2)  # the last record is appended after the answer
    capture = served.capture
    files = sorted(capture.parent.glob(capture.name + "*"))
    assert [f.name for f in files] == [capture.name, capture.name + ".1", capture.name + ".2"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size <= 4096
    records = _records(files)
    assert 8 <= len(records) < 40
    assert all(r["eventMetadata"]["status"] == 200 for r in records)
    assert {r["captureData"]["endpointInput"]["data"] for r in records} == {ROW.decode()}


def test_refused_requests_are_captured_as_metadata_without_their_bodies(endpoint_factory):
    served = endpoint_factory("--max-body-bytes", "65536", capture=True)
    big = MARKER * 5000  # 90 KB: over the limit
    bad = MARKER + b",1,2,3,4\n"  # in the limit, not a number
    head = f"POST {INVOKE} HTTP/1.1\r\nContent-Type: text/csv\r\nContent-Length: -1\r\n\r\n"
    # One at a time: each record is appended just after its answer.
    assert served.post(INVOKE, big)[0] == 413
    _wait_lines(served.capture, 1)
    assert served.post(INVOKE, bad)[0] == 400
    _wait_lines(served.capture, 2)
    assert served.request(head.encode() + MARKER)[0] == 400
    _wait_lines(served.capture, 3)
    assert served.post(INVOKE, ROW)[0] == 200
    _wait_lines(served.capture, 4)
    lines = served.capture.read_bytes().splitlines()
    # No body is stored; a reason may quote one offending value (capped, as the client saw it).
    assert all(len(line) < 1024 and MARKER * 2 not in line for line in lines)
    records = _records([served.capture])
    assert [r["eventMetadata"]["status"] for r in records] == [413, 400, 400, 200]
    for record, size, reason in zip(
        records[:3],
        [len(big), len(bad), None],
        ["over the endpoint's limit", "is not a number", "bad Content-Length '-1'"],
        strict=True,
    ):
        event = record["eventMetadata"]
        assert event["rejected"] is True and event["requestBytes"] == size
        assert reason in event["reason"] and len(event["reason"]) < 400
        assert record["captureData"]["endpointInput"]["data"] == ""
    assert records[-1]["captureData"]["endpointInput"]["data"] == ROW.decode()


def test_monitor_reads_the_rotated_capture_files(endpoint_factory, model_dir):
    served = endpoint_factory("--capture-max-bytes", "4096", "--capture-keep", "50", capture=True)
    rows = np.array([[13.2, 236, 58, 21.2, 71.3], [2.1, 50, 60, 10.0, 40.0]])
    for index in range(30):
        body = ",".join(str(v) for v in rows[index % 2]).encode() + b"\n"
        assert served.post(INVOKE, body)[0] == 200
        _wait_lines(served.capture, index + 1)  # in order
    assert served.post(INVOKE, b"nope\n")[0] == 400  # skipped by monitor
    _wait_lines(served.capture, 31)
    assert (served.capture.parent / (served.capture.name + ".3")).exists()
    data = read_monitor_data(str(served.capture), SegmentationChain.load(str(model_dir)))
    assert data.kind == "capture" and data.values.shape == (30, 5)
    np.testing.assert_allclose(data.values[:2], rows)  # oldest first
    assert any("1 failed invocation" in note for note in data.notes)
