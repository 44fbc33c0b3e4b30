"""What the first bytes of a table file say before it is parsed: empty, binary, Parquet or CSV
text, and whether its header row names usable columns.

Standard library only, so the CLI's pre-flight (`tasks/preflight.py`) refuses an empty or
binary file, or a bad header, within a second, before Prefect, pandas or pyarrow is loaded;
ingest (`tasks/ingest.py`) runs the same checks on the whole file, so a flow or a DVC stage
refuses it with the same message.
"""

from __future__ import annotations

import csv
import io
import json

from tasks.errors import DataError

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
# An endpoint capture log (JSON lines), which `popseg monitor` reads besides tables.
CAPTURE_SUFFIXES = (".jsonl", ".jsonlines")
# Enough bytes to judge text against binary and to hold a header row.
SNIFF_BYTES = 8192
HEAD_BYTES = 64 * 1024
# The delimiters a single-column header is checked for (a wrong --set data.delimiter).
_OTHER_DELIMITERS = (";", "\t", "|", ",")


def is_parquet(start: bytes, path: str) -> bool:
    return start[:4] == PARQUET_MAGIC or path.lower().endswith(PARQUET_SUFFIXES)


def looks_binary(start: bytes) -> bool:
    head = start[:SNIFF_BYTES]
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 8 KiB boundary is still text.
        return exc.start < len(head) - 4
    return False


def first_line(payload: bytes) -> str:
    # find + slice: split() would copy the rest of the file (ingest passes all of it)
    end = payload.find(b"\n")
    line = payload if end < 0 else payload[:end]
    return line.decode("utf-8", errors="replace").rstrip("\r")


def check_start(start: bytes, path: str, complete: bool) -> None:
    """Refuse a file that is empty (judged only when ``start`` is the ``complete`` file),
    binary though not Parquet, or whose first line is empty. ``path`` names it in the error."""
    if not start or start.isspace():  # strip() would copy the whole file
        if complete:
            raise DataError(f"{path}: the file is empty")
        return  # a long run of blank bytes: the parser judges the rest
    if is_parquet(start, path):
        return
    if looks_binary(start):
        raise DataError(
            f"{path}: looks like a binary file, not CSV text (and not Parquet); "
            "expected a CSV with a header row, or a .parquet file"
        )
    if not first_line(start).strip():
        raise DataError(f"{path}: the first line is empty; expected a header row of column names")


def check_unique_names(names: list[str], path: str) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(
                f"{path}: duplicate column name {name!r} (columns {seen[name]} and {position}); "
                "column names must be unique"
            )
        seen[name] = position


def check_delimiter(names: list[str], header: str, delimiter: str, path: str) -> None:
    """A header read as one column that holds another common delimiter: a wrong
    ``data.delimiter``."""
    if len(names) != 1:
        return
    for other in _OTHER_DELIMITERS:
        if other != delimiter and other in header:
            shown = "\\t" if other == "\t" else other
            raise DataError(
                f"{path}: found a single column {names[0]!r} using delimiter {delimiter!r}, "
                f"but the header contains {shown!r}: wrong delimiter? "
                f"Use --set data.delimiter='{shown}'"
            )


def check_header(start: bytes, path: str, delimiter: str) -> None:
    """The header row of a CSV file's ``start`` (checked by `check_start`) names unique
    columns with the configured delimiter. A header longer than ``start`` is left to the
    parser."""
    text = start.decode("utf-8", errors="replace")
    if "\n" not in text:
        return
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except (csv.Error, StopIteration):
        return  # the parser names what is wrong with it
    names = [name.strip() for name in header]
    check_unique_names(names, path)
    check_delimiter(names, first_line(start), delimiter, path)


def check_table_file(path: str, delimiter: str, capture_logs: bool = False) -> None:
    """Pre-flight of a local table file (which exists and is readable): its first bytes and,
    for CSV text, its header row. With ``capture_logs`` (`popseg monitor`), an endpoint
    capture log passes on its first bytes alone: it has no header row."""
    with open(path, "rb") as handle:
        start = handle.read(HEAD_BYTES)
        complete = not handle.read(1)
    check_start(start, path, complete)
    if capture_logs and is_capture_log(path, start):
        return
    if start.strip() and not is_parquet(start, path):
        check_header(start, path, delimiter)


def is_capture_log(path: str, payload: bytes) -> bool:
    """A capture log by its suffix (.jsonl / .jsonlines) or by its first line (a JSON object
    with ``captureData``)."""
    if path.lower().endswith(CAPTURE_SUFFIXES):
        return True
    first = payload.lstrip()[:1]
    if first != b"{":
        return False
    line = payload.lstrip().split(b"\n", 1)[0]
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "captureData" in record
