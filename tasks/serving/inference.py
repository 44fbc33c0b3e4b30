"""SageMaker inference handlers for the segmentation chain: the scikit-learn serving
container's ``model_fn`` + ``transform_fn`` contract.

numpy and the standard library only, valid Python 3.9: this file is copied as-is into
``model.tar.gz`` as ``code/inference.py`` next to ``code/chain.py`` (a verbatim copy of
``tasks/chain.py``). The local endpoint (``tasks/serving/server.py``) serves through the same
functions (``handle``), so every target runs the same code and the same numbers.

Requests (raw, unscaled values of the chain's request columns, ``input_columns``: the numeric
features and, for a model with categorical columns, each categorical column's raw text):

- ``text/csv``: one row per line, no header, or a header row naming the columns (any order;
  absent columns are missing values, filled as in training);
- ``application/json``: ``{"instances": [{"features": [...]}, ...]}`` (an instance may also be
  a plain list, or an object keyed by column name), or a list of records keyed by column name.

A categorical value is encoded by the chain (`chain.encode_categories`): a missing one (null,
an empty CSV cell, ``NA``/``null``/``nan`` in CSV) is the level ``Unknown``; a level the model
never saw sets none of the column's indicators and is counted in the response. One-hot
indicator columns (``region=NE``, the request form of format-1 models) are refused with a
400 that names the raw column to send instead.

Response, as SageMaker's built-in k-means:
``{"predictions": [{"closest_cluster": 2, "distance_to_cluster": 0.41}, ...]}``, plus
``"unseen_categories": {"region": 2}`` (values per column whose level the model never saw)
when a request had any. A Gaussian-mixture model (``cluster.model: gmm``) answers the most
probable component, the Mahalanobis distance to it, and its posterior probability:
``{"closest_cluster": 2, "distance_to_cluster": 1.7, "membership_probability": 0.93}``.

A request the model cannot answer is a ``RequestError`` with its 4xx status (400; 406 for an
unacceptable Accept, 413 for too many rows, 415 for an unsupported Content-Type), answered
``{"code": ..., "message": ...}`` by both targets. In the container this takes
``transform_fn``: its serving stack (``sagemaker_containers``' ``Transformer``) turns any
exception from ``input_fn``/``predict_fn`` into a 500, and only an ``UnsupportedFormatError``
from ``input_fn``/``output_fn`` into 415/406. So this module defines no ``input_fn``/
``predict_fn``/``output_fn`` (the container refuses a module that has them next to
``transform_fn``); its steps are ``decode_request`` -> ``predict`` -> ``encode_response``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:  # inside model.tar.gz, chain.py sits next to this file in code/
    from chain import ChainInputError, EncodedRows, SegmentationChain
except ImportError:  # in the project itself
    from tasks.chain import ChainInputError, EncodedRows, SegmentationChain

JSON = "application/json"
CSV = "text/csv"
SUPPORTED_CONTENT_TYPES = (CSV, JSON)
MAX_ROWS = 100000
# Requests are at most 4 levels deep; the JSON decoder recurses per level, so a body nested
# 100k deep is refused before it is decoded (a RecursionError is not a client's 400).
MAX_JSON_DEPTH = 64
# The response key counting, per categorical column, the values whose level is unseen.
UNSEEN_KEY = "unseen_categories"
# CSV cells that are a missing value (as pandas reads training CSVs), compared lowercased.
_CSV_MISSING = ("", "nan", "na", "null", "none")


MAX_MESSAGE_CHARS = 300  # error messages and log lines: never echo a client's megabytes back
# The error code of each status a request error can have (as SageMaker's own error types).
ERROR_CODES = {
    400: "ValidationError",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot answer; ``status`` is the HTTP status to reply with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def short_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """ASCII (non-ASCII and control characters escaped), at most ``limit`` characters."""
    if len(message) <= limit and message.isascii() and message.isprintable():
        return message
    text = message.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if " " <= c <= "~" else "\\x%02x" % ord(c) for c in text)
    if len(text) > limit:
        text = "%s... (%d characters cut)" % (text[:limit], len(text) - limit)
    return text


def error_payload(error: RequestError) -> Dict[str, str]:
    """The JSON answer to a refused request: ``{"code": ..., "message": ...}``."""
    return {
        "code": ERROR_CODES.get(error.status, "ValidationError"),
        "message": short_message(str(error)),
    }


def model_fn(model_dir: str) -> SegmentationChain:
    """Load chain.npz + chain.json (``allow_pickle=False``) from the model directory."""
    return SegmentationChain.load(model_dir)


def _media_type(content_type: Optional[str]) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _text(body: Any) -> str:
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            return bytes(body).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise RequestError("the request body is not UTF-8 text") from None
    if isinstance(body, str):
        return body
    raise RequestError("unsupported request body type %s" % type(body).__name__)


def _cell(value: str, row: int, name: str) -> float:
    text = value.strip()
    if text.lower() in _CSV_MISSING:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise RequestError("row %d, feature %r: %r is not a number" % (row, name, text)) from None


def _category_cell(value: str) -> Optional[str]:
    text = value.strip()
    return None if text.lower() in _CSV_MISSING else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(cells: Sequence[str], chain: SegmentationChain) -> bool:
    """A first CSV line of names: no cell a number (and, where categorical columns make a data
    row of text possible, at least one cell names a column)."""
    if not all(cell and not _is_number(cell) for cell in cells):
        return False
    if not chain.categories:
        return True
    known = set(chain.input_columns) | set(chain.feature_names)
    return any(cell in known for cell in cells)


def _onehot_hint(count: int, chain: SegmentationChain) -> str:
    """Why a row of the one-hot width is refused (models with categorical columns)."""
    if not chain.categories or count != chain.n_features:
        return ""
    return "; one-hot indicators are not taken: send the raw value of %s" % ", ".join(
        sorted(chain.categories)
    )


def _encode(table: List[List[Any]], chain: SegmentationChain) -> EncodedRows:
    """Rows of request-column values (numbers, raw category values) -> the chain's features."""
    names = chain.input_columns
    columns: Dict[str, Any] = {}
    for position, name in enumerate(names):
        values = [row[position] for row in table]
        columns[name] = values if chain.is_categorical(name) else np.asarray(values, dtype=float)
    return chain.encode_columns(columns, len(table))


def _parse_csv(text: str, chain: SegmentationChain) -> EncodedRows:
    lines = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not lines:
        raise RequestError("the request body holds no CSV rows")
    names = chain.input_columns
    first = [cell.strip() for cell in lines[0]]
    columns: List[int] = list(range(len(names)))
    rows = lines
    has_header = _is_header(first, chain)
    if has_header:
        unknown = [cell for cell in first if cell not in names]
        if any(chain.legacy_indicator(cell) for cell in unknown):
            raise RequestError("CSV header: %s" % chain.unknown_columns_message(unknown))
        if unknown:
            raise RequestError(
                "CSV header: unknown feature(s) %s; expected %s"
                % (", ".join(repr(c) for c in unknown), ", ".join(names))
            )
        if len(set(first)) != len(first):
            raise RequestError("CSV header: a feature is named twice")
        columns = [names.index(cell) for cell in first]
        rows = lines[1:]
        if not rows:
            raise RequestError("the CSV has a header but no data rows")
    if len(rows) > MAX_ROWS:
        raise RequestError("too many rows (%d > %d)" % (len(rows), MAX_ROWS), status=413)
    categorical = [chain.is_categorical(name) for name in names]
    numeric_only = not any(categorical)
    values = np.full((len(rows), len(names)), np.nan) if numeric_only else None
    table: List[List[Any]] = []
    for index, row in enumerate(rows):
        line = index + (2 if has_header else 1)
        if len(row) != len(columns):
            raise RequestError(
                "CSV line %d has %d field(s); expected %d (%s)%s"
                % (
                    line,
                    len(row),
                    len(columns),
                    ", ".join(names[c] for c in columns),
                    _onehot_hint(len(row), chain),
                )
            )
        if values is not None:  # no categorical column: straight into the feature rows
            for position, cell in enumerate(row):
                column = columns[position]
                values[index, column] = _cell(cell, line, names[column])
            continue
        parsed: List[Any] = [None if flag else float("nan") for flag in categorical]
        for position, cell in enumerate(row):
            column = columns[position]
            if categorical[column]:
                parsed[column] = _category_cell(cell)
            else:
                parsed[column] = _cell(cell, line, names[column])
        table.append(parsed)
    if values is not None:
        return EncodedRows(values, {})
    return _encode(table, chain)


def _number(value: Any, row: int, name: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError("row %d, feature %r: %r is not a number" % (row, name, value))
    return float(value)


def _value(value: Any, row: int, name: str, chain: SegmentationChain) -> Any:
    """A JSON value of request column ``name``: a number, or a category value."""
    if not chain.is_categorical(name):
        return _number(value, row, name)
    try:
        return chain.category_value(value, row - 1, name)
    except ChainInputError as error:
        raise RequestError(str(error)) from None


def _vector(values: Any, row: int, chain: SegmentationChain) -> List[Any]:
    names = chain.input_columns
    if not isinstance(values, list):
        raise RequestError("instance %d: features must be a list of numbers" % row)
    if len(values) != len(names):
        raise RequestError(
            "instance %d has %d feature(s); expected %d (%s)%s"
            % (row, len(values), len(names), ", ".join(names), _onehot_hint(len(values), chain))
        )
    return [_value(value, row, names[i], chain) for i, value in enumerate(values)]


def _record(record: Dict[str, Any], row: int, chain: SegmentationChain) -> List[Any]:
    names = chain.input_columns
    unknown = sorted(str(name) for name in record if name not in names)
    if unknown:
        raise RequestError("record %d: %s" % (row, chain.unknown_columns_message(unknown)))
    return [_value(record.get(name), row, name, chain) for name in names]


def _json_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings not counted)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than the limit: skip the scan
    if "\\" in text:  # escapes: pairs of backslashes first, then what is left is \" (quote)
        text = text.replace("\\\\", "__").replace('\\"', "__")
    codes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    # Without escapes every quote opens or closes a string: odd running count = inside one.
    outside = (np.cumsum(codes == ord('"')) & 1) == 0
    opens = ((codes == ord("[")) | (codes == ord("{"))) & outside
    closes = ((codes == ord("]")) | (codes == ord("}"))) & outside
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


def _parse_json(text: str, chain: SegmentationChain) -> EncodedRows:
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise RequestError("the request body nests JSON deeper than %d levels" % MAX_JSON_DEPTH)
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RequestError("the request body is not valid JSON: %s" % error) from None
    if isinstance(payload, dict):
        if "instances" not in payload:
            raise RequestError(
                'expected {"instances": [{"features": [...]}, ...]} or a list of records; '
                "got an object with keys %s" % ", ".join(sorted(map(str, payload))[:10])
            )
        items = payload["instances"]
    else:
        items = payload
    if not isinstance(items, list):
        raise RequestError("instances must be a list")
    if not items:
        raise RequestError("no instances in the request")
    if len(items) > MAX_ROWS:
        raise RequestError("too many rows (%d > %d)" % (len(items), MAX_ROWS), status=413)
    table: List[List[Any]] = []
    for index, item in enumerate(items):
        row = index + 1
        if isinstance(item, dict) and "features" in item and set(item) <= {"features", "id"}:
            table.append(_vector(item["features"], row, chain))
        elif isinstance(item, list):
            table.append(_vector(item, row, chain))
        elif isinstance(item, dict):
            table.append(_record(item, row, chain))
        else:
            raise RequestError(
                'instance %d: expected {"features": [...]}, a list of numbers or a record' % row
            )
    return _encode(table, chain)


def decode_request(request_body: Any, request_content_type: Optional[str]) -> Any:
    """Body + content type -> raw feature rows (n, n_features). The chain is needed to map
    names, so this returns a deferred parse that ``predict`` completes with the model."""
    media = _media_type(request_content_type)
    if media not in SUPPORTED_CONTENT_TYPES:
        raise RequestError(
            "unsupported content type %r; use text/csv or application/json" % request_content_type,
            status=415,
        )
    text = _text(request_body)
    if not text.strip():
        raise RequestError("the request body is empty")
    return _Parsed(media, text)


class _Parsed:
    """A request body checked for type and emptiness, parsed once the model is known."""

    def __init__(self, media: str, text: str) -> None:
        self.media = media
        self.text = text

    def encode(self, chain: SegmentationChain) -> EncodedRows:
        """The rows in the chain's feature space, with the unseen category levels."""
        if self.media == CSV:
            return _parse_csv(self.text, chain)
        return _parse_json(self.text, chain)

    def rows(self, chain: SegmentationChain) -> np.ndarray:
        return self.encode(chain).values


def predict(input_data: Any, model: SegmentationChain) -> Dict[str, Any]:
    """Rows -> {"predictions": [{"closest_cluster", "distance_to_cluster"}, ...]}, with
    "membership_probability" for a Gaussian-mixture model (and ``unseen_categories`` when a
    categorical value had a level the model never saw)."""
    unseen: Dict[str, int] = {}
    if isinstance(input_data, _Parsed):
        encoded = input_data.encode(model)
        rows, unseen = encoded.values, encoded.unseen_counts()
    else:
        rows = np.asarray(input_data, dtype=np.float64)
    try:
        segments, distances, probabilities = model.predict_membership(rows)
    except ChainInputError as error:
        raise RequestError(str(error)) from None
    predictions = [
        {"closest_cluster": int(segment), "distance_to_cluster": _finite(distance)}
        for segment, distance in zip(segments.tolist(), distances.tolist())
    ]
    if probabilities is not None:
        for prediction, probability in zip(predictions, probabilities.tolist()):
            prediction["membership_probability"] = _finite(probability)
    answer: Dict[str, Any] = {"predictions": predictions}
    if unseen:
        answer[UNSEEN_KEY] = unseen
    return answer


def _finite(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def encode_response(prediction: Dict[str, Any], accept: Optional[str]) -> Tuple[str, str]:
    """Encode as JSON (the only response type); returns (body, content type)."""
    media = _media_type(accept)
    if media not in ("", "*/*", JSON, "application/*"):
        raise RequestError("unsupported accept type %r; use application/json" % accept, status=406)
    return json.dumps(prediction), JSON


def handle(
    model: SegmentationChain, body: Any, content_type: Optional[str], accept: Optional[str]
) -> Tuple[str, str]:
    """The whole request path: (JSON body, content type), or ``RequestError``."""
    return encode_response(predict(decode_request(body, content_type), model), accept)


def transform_fn(
    model: SegmentationChain, request_body: Any, content_type: Optional[str], accept: Optional[str]
) -> Any:
    """The serving container's entry point: (body, content type) for an answer; for a request
    error, the container framework's response object with the 4xx status and the short JSON
    message (logged as one line, no traceback). Outside the container (no framework to build
    the response with) the ``RequestError`` is raised for the caller to answer."""
    try:
        return handle(model, request_body, content_type, accept)
    except RequestError as error:
        return _container_error_response(error)


def _container_error_response(error: RequestError) -> Any:
    try:  # present only in the serving container
        from sagemaker_containers.beta.framework import worker
    except ImportError:
        worker = None
    if worker is None:
        raise error
    payload = error_payload(error)
    logger.warning("request refused with %d: %s", error.status, payload["message"])
    return worker.Response(response=json.dumps(payload), status=error.status, mimetype=JSON)
