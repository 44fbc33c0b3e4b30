import pytest

from tasks.config import load_params
from tasks.errors import ConfigError


def test_defaults_from_params_file(params):
    assert params.cluster.k_min == 2
    assert params.cluster.k_max == 12
    assert params.reduce.n_components == 0.8
    assert params.flat()["cluster.seed"] == 0
    assert set(params.to_dict()) >= {"data", "validate", "register", "promote"}


def test_overrides_are_typed(params, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cluster:\n  k_max: 5\n")
    p = load_params(
        path,
        [
            "cluster.k_max=8",
            "cluster.seed=2",
            "reduce.n_components=3",
            "scale.clip_quantiles=[0.01, 0.99]",
            "features.exclude=[a, b]",
        ],
    )
    assert p.cluster.k_max == 8 and p.cluster.seed == 2
    assert p.reduce.n_components == 3 and isinstance(p.reduce.n_components, int)
    assert p.scale.clip_quantiles == (0.01, 0.99)
    assert p.features.exclude == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.kmax=3", "unknown key cluster.kmax"),
        ("clusters.k_max=3", "unknown section 'clusters'"),
        ("k_max=3", "must be section.key"),
        ("cluster.k_max", "expected section.key=value"),
        ("cluster.k_max=abc", "cluster.k_max"),
        ("cluster.k_min=1", "cluster.k_min"),
        ("reduce.n_components=1.5", "reduce.n_components"),
        ("scale.method=zscore", "scale.method"),
        ("scale.clip_quantiles=[0.9, 0.1]", "scale.clip_quantiles"),
        ("impute.strategy=magic", "impute.strategy"),
        ("data.delimiter=;;", "data.delimiter"),
        ("schedule.stop_timeout_s=0", "schedule.stop_timeout_s"),
        ("schedule.stop_timeout_s=soon", "schedule.stop_timeout_s"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_params(overrides=[override])


def test_k_min_greater_than_k_max():
    with pytest.raises(ConfigError, match=r"k_min \(9\) is greater than k_max \(3\)"):
        load_params(overrides=["cluster.k_min=9", "cluster.k_max=3"])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cluster:\n  k_maximum: 5\n")
    with pytest.raises(ConfigError, match=r"cluster\.k_maximum: unknown key"):
        load_params(path)


def test_old_cluster_engine_key_names_the_new_one(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cluster:\n  engine: sklearn\n")
    with pytest.raises(
        ConfigError, match=r"p\.yaml: cluster\.engine was renamed; use cluster\.backend"
    ):
        load_params(path)
    with pytest.raises(ConfigError, match=r"cluster\.engine was renamed; use cluster\.backend"):
        load_params(overrides=["cluster.engine=sklearn"])
    assert load_params(overrides=["cluster.backend=sklearn"]).cluster.backend == "sklearn"


def test_unknown_section_and_bad_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("clustering:\n  k_max: 5\n")
    with pytest.raises(ConfigError, match="clustering: unknown key"):
        load_params(path)
    path.write_text("cluster: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "override",
    [
        "deploy.max_connections=0",
        "deploy.request_timeout_s=0",
        "deploy.idle_timeout_s=-1",
        "deploy.capture_max_mb=0",
        "deploy.capture_keep=-1",
    ],
)
def test_endpoint_limits_are_validated(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=[override])


def test_endpoint_limits_reach_the_server_command_line():
    from tasks.deploy.local import ServerLimits

    params = load_params(overrides=["deploy.max_connections=7", "deploy.capture_max_mb=0.5"])
    arguments = ServerLimits.from_config(params.deploy).arguments()
    options = dict(zip(arguments[::2], arguments[1::2], strict=True))
    assert options["--max-connections"] == "7"
    assert options["--capture-max-bytes"] == str(512 * 1024)
    assert options["--request-timeout-s"] == "30.0" and options["--idle-timeout-s"] == "10.0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["validate.max_rows=5"], r"validate\.max_rows \(5\) is below data\.min_rows \(10\)"),
        (
            ["validate.min_rows=50", "validate.max_rows=20"],
            r"validate\.max_rows \(20\) is below validate\.min_rows \(50\)",
        ),
    ],
)
def test_row_bounds_that_no_data_could_pass(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=overrides)
    assert load_params(overrides=["validate.max_rows=10"]).validate_.max_rows == 10
