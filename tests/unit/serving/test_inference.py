"""The SageMaker inference handlers on a small hand-made chain: request formats, errors with
their HTTP status, and the serving code's isolation (numpy + stdlib, Python 3.9 syntax)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tasks.chain import SegmentationChain
from tasks.serving import inference
from tasks.serving.inference import RequestError
from tests.chains import categorical_chain, identity_chain

ROOT = Path(__file__).resolve().parents[3]
NAMES = ["a", "b", "c"]


def make_chain() -> SegmentationChain:
    """Identity scaling/PCA, three centroids far apart; fill values (1, 2, 3)."""
    return identity_chain(
        NAMES,
        [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]],
        fill_values=np.array([1.0, 2.0, 3.0]),
        segment_ids=np.array([7, 8, 9]),
    )


@pytest.fixture
def chain():
    return make_chain()


def answer(chain, body, content_type="text/csv", accept="application/json"):
    text, media = inference.handle(chain, body, content_type, accept)
    assert media == "application/json"
    return json.loads(text)["predictions"]


def test_csv_rows_without_header(chain):
    predictions = answer(chain, b"0,0,0\n10,0,0\n0,9,0\n")
    assert [p["closest_cluster"] for p in predictions] == [7, 8, 9]
    assert predictions[0]["distance_to_cluster"] == pytest.approx(0.0)
    assert predictions[2]["distance_to_cluster"] == pytest.approx(1.0)


def test_csv_header_in_any_order_and_missing_values_filled(chain):
    # Header names the features in another order; "c" is absent -> filled with 3.0; an empty
    # cell of "b" -> filled with 2.0.
    predictions = answer(chain, "b,a\n,10\n")
    assert predictions[0]["closest_cluster"] == 8
    assert predictions[0]["distance_to_cluster"] == pytest.approx(np.sqrt(2.0**2 + 3.0**2))


def test_json_instances_lists_and_records(chain):
    body = json.dumps(
        {"instances": [{"features": [10, 0, 0]}, [0, 10, 0], {"a": 0, "b": 0, "c": None}]}
    )
    predictions = answer(chain, body, "application/json; charset=utf-8")
    assert [p["closest_cluster"] for p in predictions] == [8, 9, 7]
    assert predictions[2]["distance_to_cluster"] == pytest.approx(3.0)  # c filled with 3


def test_json_list_of_records(chain):
    predictions = answer(
        chain, json.dumps([{"a": 10, "b": 0, "c": 0}, {"b": 10}]), "application/json"
    )
    assert [p["closest_cluster"] for p in predictions] == [8, 9]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"1,2\n", "text/csv", 400, "CSV line 1 has 2 field(s); expected 3"),
        (b"a,b,zz\n1,2,3\n", "text/csv", 400, "unknown feature(s) 'zz'"),
        (b"1,x,3\n", "text/csv", 400, "row 1, feature 'b': 'x' is not a number"),
        (b"a,b,c\n", "text/csv", 400, "has a header but no data rows"),
        (b"", "text/csv", 400, "the request body is empty"),
        (b"  \n", "application/json", 400, "the request body is empty"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"rows": []}', "application/json", 400, 'expected {"instances"'),
        (b'{"instances": []}', "application/json", 400, "no instances"),
        (b'{"instances": [{"features": [1, 2]}]}', "application/json", 400, "has 2 feature(s)"),
        (
            b'{"instances": [{"features": [1, "2", 3]}]}',
            "application/json",
            400,
            "'2' is not a number",
        ),
        (b'[{"a": 1, "zz": 2}]', "application/json", 400, "unknown feature(s) zz"),
        (b'[{"a": true}]', "application/json", 400, "True is not a number"),
        (b"1,inf,3\n", "text/csv", 400, "infinite value"),
        (b"\xff\xfe", "text/csv", 400, "not UTF-8"),
        (b"1,2,3", "application/xml", 415, "unsupported content type 'application/xml'"),
        (b"1,2,3", None, 415, "unsupported content type None"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(chain, body, content_type, status, message):
    with pytest.raises(RequestError) as caught:
        inference.handle(chain, body, content_type, "application/json")
    assert caught.value.status == status
    assert message in str(caught.value)


def test_unsupported_accept_is_406(chain):
    with pytest.raises(RequestError) as caught:
        inference.handle(chain, b"1,2,3", "text/csv", "text/html")
    assert caught.value.status == 406


def test_too_many_rows_is_413(chain, monkeypatch):
    monkeypatch.setattr(inference, "MAX_ROWS", 2)
    with pytest.raises(RequestError) as caught:
        inference.handle(chain, b"1,2,3\n" * 3, "text/csv", None)
    assert caught.value.status == 413


def test_transform_fn_is_the_container_entry_point(chain):
    """The container refuses a module defining transform_fn next to input_fn, predict_fn or
    output_fn; outside it (no framework to answer with) a request error is raised."""
    assert not {"input_fn", "predict_fn", "output_fn"} & set(vars(inference))
    body, media = inference.transform_fn(chain, "10,0,0\n", "text/csv", "application/json")
    assert media == "application/json"
    assert json.loads(body)["predictions"][0]["closest_cluster"] == 8
    with pytest.raises(RequestError) as caught:
        inference.transform_fn(chain, "a,zz\n1,2\n", "text/csv", None)
    assert caught.value.status == 400


def test_error_payload_is_short_ascii_with_the_status_code():
    payload = inference.error_payload(RequestError("bad \u00e9 " + "x" * 1000, status=415))
    assert payload["code"] == "UnsupportedMediaType"
    assert payload["message"].startswith("bad \\xe9 x")
    assert payload["message"].endswith("(709 characters cut)")
    assert len(payload["message"]) < 340


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"instances": ' * 5000 + "[]" + "}" * 5000,
        '[{"a": ' * 65 + "1" + "}]" * 65,
    ],
)
def test_deeply_nested_json_is_400_not_a_recursion_error(chain, body):
    with pytest.raises(RequestError) as caught:
        inference.handle(chain, body, "application/json", None)
    assert caught.value.status == 400
    assert "nests JSON deeper than 64 levels" in str(caught.value)


def test_brackets_inside_json_strings_do_not_count_as_nesting(chain):
    label = '[\\"\\\\' * 40  # brackets, escaped quotes and backslashes in a string
    body = json.dumps([{"features": [10, 0, 0], "id": label}] * 70)
    assert [p["closest_cluster"] for p in answer(chain, body, "application/json")] == [8] * 70


def test_model_fn_loads_the_saved_chain(chain, tmp_path):
    chain.save(str(tmp_path))
    loaded = inference.model_fn(str(tmp_path))
    assert loaded.feature_names == NAMES
    assert answer(loaded, b"10,0,0\n")[0]["closest_cluster"] == 8


@pytest.mark.parametrize("name", ["tasks/serving/inference.py", "tasks/chain.py"])
def test_serving_code_is_python_3_9(name):
    source = (ROOT / name).read_text()
    ast.parse(source, filename=name, feature_version=(3, 9))
    tree = ast.parse(source)
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    allowed = {
        "__future__",
        "csv",
        "hashlib",
        "io",
        "json",
        "logging",
        "math",
        "os",
        "typing",
        "numpy",
        "chain",
        "tasks",
        # imported inside transform_fn's error path, where the serving container has it
        "sagemaker_containers",
    }
    assert imported <= allowed, imported - allowed
    assert not {"pickle", "joblib", "cloudpickle"} & imported


def test_handlers_run_alone_with_only_numpy(chain, tmp_path):
    """code/inference.py + code/chain.py in an isolated interpreter (-I: no project, no
    site customisation; only numpy's folder on sys.path) load the model and answer."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text((ROOT / "tasks/serving/inference.py").read_text())
    (code / "chain.py").write_text((ROOT / "tasks/chain.py").read_text())
    model_dir = tmp_path / "model"
    chain.save(str(model_dir))
    # Only numpy is importable: a folder holding links to numpy (and its bundled libraries).
    only_numpy = tmp_path / "only-numpy"
    only_numpy.mkdir()
    site = Path(np.__file__).resolve().parents[1]
    for entry in site.glob("numpy*"):
        if entry.is_dir() and not entry.name.endswith(".dist-info"):
            (only_numpy / entry.name).symlink_to(entry)
    numpy_parent = str(only_numpy)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p]
        sys.path.insert(0, {str(code)!r})
        sys.path.append({numpy_parent!r})
        import inference
        model = inference.model_fn({str(model_dir)!r})
        body, media = inference.transform_fn(model, b"10,0,0\\n0,10,0\\n", "text/csv", None)
        heavy = sorted(m for m in ("pandas", "sklearn", "mlflow", "scipy", "tasks", "prefect")
                       if m in sys.modules)
        try:
            import pandas
            heavy.append("pandas importable")
        except ImportError:
            pass
        print(json.dumps({{"body": json.loads(body), "heavy": heavy,
                          "chain_from": sys.modules["chain"].__file__}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [p["closest_cluster"] for p in payload["body"]["predictions"]] == [8, 9]
    assert payload["chain_from"] == str(code / "chain.py")
    assert payload["heavy"] == []


# ----------------------------------------------------------------------------- categorical


def full_answer(chain, body, content_type):
    text, _ = inference.handle(chain, body, content_type, "application/json")
    return json.loads(text)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'[{"x": 0, "region": "NE"}, {"x": 0, "region": "MW"}, {"x": 9}]', "application/json"),
        (
            b'{"instances": [{"features": [0, "NE"]}, [0, "MW"], {"x": 9, "region": null}]}',
            "application/json",
        ),
        (b"x,region\n0,NE\n0, MW\n9,\n", "text/csv"),
        (b'region,x\nNE,0\n"MW",0\nNA,9\n', "text/csv"),
        (b"0,NE\n0,MW\n9,\n", "text/csv"),
    ],
)
def test_categorical_requests_take_raw_values(body, content_type):
    chain = categorical_chain()
    reply = full_answer(chain, body, content_type)
    assert [p["closest_cluster"] for p in reply["predictions"]] == [1, 0, 2]
    assert reply["predictions"][2]["distance_to_cluster"] == pytest.approx(1.0)  # x 9 vs 10
    assert inference.UNSEEN_KEY not in reply


def test_an_unseen_level_is_answered_and_counted():
    chain = categorical_chain()
    reply = full_answer(
        chain,
        b'[{"x": 0, "region": "XX"}, {"x": 0, "region": "YY"}, {"x": 0, "region": "NE"}]',
        JSON_TYPE,
    )
    # No indicator set: (0, 0, 0, 0) is 1 from centroids 0 and 1; the first (segment 0) wins.
    assert [p["closest_cluster"] for p in reply["predictions"]] == [0, 0, 1]
    assert reply["predictions"][0]["distance_to_cluster"] == pytest.approx(1.0)
    assert reply[inference.UNSEEN_KEY] == {"region": 2}
    csv_reply = full_answer(chain, b"x,region\n0,XX\n", "text/csv")
    assert csv_reply[inference.UNSEEN_KEY] == {"region": 1}


JSON_TYPE = "application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b'[{"x": 0, "region=NE": 1}]',
            JSON_TYPE,
            "'region=NE': one-hot indicator column(s) are not taken",
        ),
        (
            b"x,region=MW,region=NE,region=Unknown\n0,0,1,0\n",
            "text/csv",
            "CSV header: 'region=MW', 'region=NE', 'region=Unknown': one-hot",
        ),
        (
            b"0,0,1,0\n",
            "text/csv",
            "one-hot indicators are not taken: send the raw value of region",
        ),
        (b'{"instances": [[0, 0, 1, 0]]}', JSON_TYPE, "one-hot indicators are not taken"),
        (
            b'[{"x": "zero", "region": "NE"}]',
            JSON_TYPE,
            "row 1, feature 'x': 'zero' is not a number",
        ),
        (b"x,region\nzero,NE\n", "text/csv", "row 2, feature 'x': 'zero' is not a number"),
        (b'[{"x": 0, "region": [1]}]', JSON_TYPE, "column 'region': [1] is not a category value"),
    ],
)
def test_categorical_request_errors_are_400s_naming_the_column(body, content_type, message):
    with pytest.raises(RequestError) as caught:
        inference.handle(categorical_chain(), body, content_type, JSON_TYPE)
    assert caught.value.status == 400
    assert message in str(caught.value)
