"""impute, scale and reduce against scikit-learn and hand-checked values."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

from tasks.config import load_params
from tasks.errors import ConfigError, DataError
from tasks.impute import impute
from tasks.reduce import reduce
from tasks.scale import scale, skewness


@pytest.fixture
def holes():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(60, 4)) * [1, 5, 10, 0.1] + [0, 3, 100, 1]
    values[rng.random(values.shape) < 0.1] = np.nan
    return pd.DataFrame(values, columns=list("abcd"))


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_simple_strategies_match_sklearn(holes, strategy):
    config = load_params(overrides=[f"impute.strategy={strategy}", "impute.fill_value=-1"]).impute
    result = impute(holes, config)
    reference = SimpleImputer(strategy=strategy, fill_value=-1).fit(holes.to_numpy())
    np.testing.assert_allclose(result.values, reference.transform(holes.to_numpy()))
    np.testing.assert_allclose(result.fill_values, reference.statistics_.astype(float))
    assert result.report["cells_filled"] == int(holes.isna().sum().sum())
    assert result.report["columns"]["a"]["missing"] == int(holes["a"].isna().sum())


def test_knn_matches_sklearn(holes):
    config = load_params(overrides=["impute.strategy=knn", "impute.n_neighbors=3"]).impute
    result = impute(holes, config, backend="sklearn")
    expected = KNNImputer(n_neighbors=3).fit_transform(holes.to_numpy())
    np.testing.assert_allclose(result.values, expected)
    np.testing.assert_allclose(result.fill_values, expected.mean(axis=0))


def test_iterative_fills_everything_and_is_seeded(holes):
    config = load_params(overrides=["impute.strategy=iterative"]).impute
    first, second = impute(holes, config), impute(holes, config)
    assert not np.isnan(first.values).any()
    np.testing.assert_array_equal(first.values, second.values)
    observed = ~holes.isna().to_numpy()
    np.testing.assert_array_equal(first.values[observed], holes.to_numpy()[observed])


def test_drop_keeps_complete_rows(holes):
    config = load_params(overrides=["impute.strategy=drop"]).impute
    result = impute(holes, config)
    complete = ~holes.isna().any(axis=1).to_numpy()
    np.testing.assert_array_equal(result.kept_rows, complete)
    np.testing.assert_array_equal(result.values, holes.to_numpy()[complete])
    assert result.report["rows_dropped"] == int((~complete).sum())


def test_all_missing_column_is_an_error(holes):
    holes["d"] = np.nan
    with pytest.raises(DataError, match="column\\(s\\) d have no values"):
        impute(holes, load_params().impute)


@pytest.mark.parametrize(
    ("method", "reference"),
    [
        ("standard", StandardScaler()),
        ("minmax", MinMaxScaler()),
        ("minmax_sym", MinMaxScaler(feature_range=(-1, 1))),
        ("robust", RobustScaler()),
        ("maxabs", MaxAbsScaler()),
    ],
)
def test_scalers_match_sklearn(method, reference):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(50, 3)) * [1, 10, 100] + [5, -5, 50]
    config = load_params(overrides=[f"scale.method={method}", "scale.log1p=none"]).scale
    result = scale(values, ["a", "b", "c"], config)
    np.testing.assert_allclose(result.values, reference.fit_transform(values), atol=1e-12)
    # The stored affine form reproduces the transform.
    np.testing.assert_allclose((values - result.center) / result.scale, result.values)


def test_constant_column_keeps_unit_scale():
    values = np.column_stack([np.arange(5.0), np.full(5, 7.0)])
    result = scale(values, ["a", "b"], load_params(overrides=["scale.log1p=none"]).scale)
    assert result.scale[1] == 1.0
    np.testing.assert_allclose(result.values[:, 1], 0.0)


def test_log1p_auto_picks_skewed_non_negative_columns():
    rng = np.random.default_rng(4)
    counts = rng.lognormal(5, 1.5, size=200)  # skewed, >= 0
    negative_skewed = -rng.lognormal(1, 1.0, size=200)  # skewed but negative
    symmetric = rng.normal(size=200)
    values = np.column_stack([counts, negative_skewed, symmetric])
    result = scale(values, ["counts", "neg", "sym"], load_params().scale)
    assert result.log1p_mask.tolist() == [True, False, False]
    assert result.report["log1p_columns"] == ["counts"]
    logged = np.log1p(counts)
    np.testing.assert_allclose(result.values[:, 0], (logged - logged.mean()) / logged.std())


def test_log1p_list_and_errors():
    values = np.column_stack([np.arange(1.0, 6.0), np.arange(-2.0, 3.0)])
    config = load_params(overrides=["scale.log1p=[a]"]).scale
    assert scale(values, ["a", "b"], config).log1p_mask.tolist() == [True, False]
    with pytest.raises(ConfigError, match="unknown feature\\(s\\): z"):
        scale(values, ["a", "b"], load_params(overrides=["scale.log1p=[z]"]).scale)
    with pytest.raises(ConfigError, match="b have negative values"):
        scale(values, ["a", "b"], load_params(overrides=["scale.log1p=[b]"]).scale)


def test_clipping_uses_training_quantiles():
    values = np.arange(101.0).reshape(-1, 1)
    config = load_params(
        overrides=["scale.log1p=none", "scale.method=none", "scale.clip_quantiles=[0.1, 0.9]"]
    ).scale
    result = scale(values, ["a"], config)
    assert result.clip_low[0] == 10.0 and result.clip_high[0] == 90.0
    assert result.values.min() == 10.0 and result.values.max() == 90.0


def test_skewness_matches_scipy():
    from scipy.stats import skew

    values = np.random.default_rng(5).lognormal(size=(100, 2))
    np.testing.assert_allclose(skewness(values), skew(values, axis=0))


def test_pca_by_variance_fraction_matches_sklearn(crime_frame):
    values = StandardScaler().fit_transform(crime_frame.drop(columns="State").to_numpy())
    names = list(crime_frame.columns[1:])
    result = reduce(values, names, load_params().reduce)
    reference = PCA(n_components=0.8, svd_solver="full").fit(values)
    assert result.applied and result.components.shape[0] == reference.n_components_
    assert result.explained_variance_ratio.sum() >= 0.8
    # Same subspace (signs may flip): |cos| of matching components is 1.
    cos = np.abs((result.components * reference.components_).sum(axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    np.testing.assert_allclose(
        np.abs(result.values), np.abs(reference.transform(values)), atol=1e-8
    )
    loadings = result.loadings(names)
    assert list(loadings.columns) == names and loadings.index[0] == "PC1"


def test_pca_int_none_and_auto():
    values = np.random.default_rng(6).normal(size=(40, 6))
    names = [f"f{i}" for i in range(6)]
    assert reduce(
        values, names, load_params(overrides=["reduce.n_components=2"]).reduce
    ).values.shape == (40, 2)
    skipped = reduce(values, names, load_params(overrides=["reduce.n_components=none"]).reduce)
    assert not skipped.applied and skipped.values.shape == (40, 6)
    auto = reduce(values, names, load_params(overrides=["reduce.n_components=auto"]).reduce)
    assert not auto.applied and "auto" in auto.report["reason"]
    auto_small = reduce(
        values,
        names,
        load_params(overrides=["reduce.n_components=auto", "reduce.auto_min_features=3"]).reduce,
    )
    assert auto_small.applied and auto_small.explained_variance_ratio.sum() >= 0.8
    capped = reduce(values[:3], names, load_params(overrides=["reduce.n_components=5"]).reduce)
    assert capped.values.shape == (3, 3)


def test_prepared_round_trips_through_its_files(holes, tmp_path):
    from tasks.prepare import Prepared

    params = load_params(overrides=["impute.strategy=median", "reduce.n_components=2"])
    names = list(holes.columns)
    imputed = impute(holes, params.impute)
    scaled = scale(imputed.values, names, params.scale)
    prepared = Prepared(names, imputed, scaled, reduce(scaled.values, names, params.reduce))
    loaded = Prepared.load(prepared.save(tmp_path / "prepared"))
    assert loaded.names == names and loaded.reduced.applied
    for step in ("imputed", "scaled", "reduced"):
        before, after = getattr(prepared, step), getattr(loaded, step)
        assert after.report == json.loads(json.dumps(before.report, default=str))
        for field in dataclasses.fields(before):
            if field.name != "report":
                value = getattr(after, field.name)
                np.testing.assert_array_equal(value, getattr(before, field.name))
    with pytest.raises(DataError, match="prepared.npz: missing"):
        Prepared.load(tmp_path / "elsewhere")


def test_pca_by_variance_keeps_at_least_min_components():
    # 2-D data whose first component alone explains > 80%: the floor keeps both, so groups
    # that differ along the minor axis are not merged.
    rng = np.random.default_rng(7)
    values = np.column_stack([rng.normal(scale=3.0, size=200), rng.normal(size=200)])
    values = StandardScaler(with_std=False).fit_transform(values)
    names = ["wide", "narrow"]
    floor = reduce(values, names, load_params().reduce)
    assert floor.values.shape == (200, 2)
    assert "at least reduce.min_components=2" in floor.report["reason"]
    plain = reduce(values, names, load_params(overrides=["reduce.min_components=1"]).reduce)
    assert plain.values.shape == (200, 1) and "min_components" not in plain.report["reason"]
    # Never more components than features.
    one = reduce(
        values[:, :1], names[:1], load_params(overrides=["reduce.min_components=3"]).reduce
    )
    assert one.values.shape == (200, 1)


def test_kept_rows_of_the_input_frame(holes):
    frame = holes.reset_index(drop=True).assign(row=[f"r{i}" for i in range(len(holes))])
    features = frame.drop(columns="row")
    every = impute(features, load_params().impute)
    pd.testing.assert_frame_equal(every.kept(frame), frame)
    dropped = impute(features, load_params(overrides=["impute.strategy=drop"]).impute)
    kept = dropped.kept(frame)
    assert len(kept) == int(dropped.kept_rows.sum()) < len(frame)
    assert list(kept.index) == list(range(len(kept)))
    assert kept["row"].tolist() == frame["row"][dropped.kept_rows].tolist()


def test_prepare_keeps_the_projection_not_its_input(holes, tmp_path):
    """The scaled values are only PCA's input: `prepare` drops them once projected, and a
    prepared folder without them loads back (None) with everything else intact."""
    from tasks.ingest import IngestedData
    from tasks.prepare import Prepared, prepare

    frame = holes.assign(id=[f"r{i}" for i in range(len(holes))])
    data = IngestedData(
        frame=frame, id_column="id", feature_columns=list("abcd"), source="m.csv", md5="0"
    )
    params = load_params(overrides=["reduce.n_components=2"])
    prepared = prepare(params, data)
    assert prepared.scaled.values is None
    imputed = impute(holes, params.impute)
    scaled = scale(imputed.values, list("abcd"), params.scale)
    expected = reduce(scaled.values, list("abcd"), params.reduce)
    np.testing.assert_allclose(prepared.reduced.values, expected.values, rtol=1e-12, atol=1e-12)
    loaded = Prepared.load(prepared.save(tmp_path / "prepared"))
    assert loaded.scaled.values is None
    np.testing.assert_array_equal(loaded.reduced.values, prepared.reduced.values)
    np.testing.assert_array_equal(loaded.scaled.center, prepared.scaled.center)
    np.testing.assert_array_equal(loaded.imputed.values, prepared.imputed.values)
