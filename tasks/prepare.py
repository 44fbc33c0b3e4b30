"""Prepare: impute -> scale -> reduce, fitted. `Prepared` holds the values the sweep clusters
and every parameter of the serving chain before the centroids; `prepare` fits them on rows
in memory (the Dask engine fits the same parameters from statistics over partitions:
tasks/dask_engine/engine.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks import impute, reduce, scale
from tasks.config import Params
from tasks.errors import DataError
from tasks.ingest import IngestedData

# prepared.npz: array name -> (the step's result, its field)
_ARRAYS = {
    "imputed_values": ("imputed", "values"),
    "kept_rows": ("imputed", "kept_rows"),
    "fill_values": ("imputed", "fill_values"),
    "scaled_values": ("scaled", "values"),
    "log1p_mask": ("scaled", "log1p_mask"),
    "clip_low": ("scaled", "clip_low"),
    "clip_high": ("scaled", "clip_high"),
    "scale_center": ("scaled", "center"),
    "scale_scale": ("scaled", "scale"),
    "reduced_values": ("reduced", "values"),
    "pca_mean": ("reduced", "mean"),
    "pca_components": ("reduced", "components"),
    "explained_variance_ratio": ("reduced", "explained_variance_ratio"),
    "full_explained_variance_ratio": ("reduced", "full_explained_variance_ratio"),
}
# ... of which these may be absent (None): the scaled values are the projection's input only
# and not kept once it has run (see `prepare`)
_OPTIONAL_ARRAYS = frozenset({"scaled_values"})
# prepared.json: each step's report
_REPORTS = {"imputed": "impute", "scaled": "scale", "reduced": "reduce"}


@dataclass
class Prepared:
    """Impute -> scale -> reduce, fitted: the values the sweep clusters and every parameter
    the serving chain needs."""

    names: list[str]
    imputed: impute.ImputeResult
    scaled: scale.ScaleResult
    reduced: reduce.ReduceResult

    def save(self, folder: str | Path) -> Path:
        """Arrays to ``prepared.npz`` (no pickle), reports to ``prepared.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            name: getattr(getattr(self, step), attribute)
            for name, (step, attribute) in _ARRAYS.items()
        }
        arrays = {name: array for name, array in arrays.items() if array is not None}
        with open(folder / "prepared.npz", "wb") as handle:
            np.savez(handle, **arrays)
        reports = {
            "feature_names": self.names,
            "pca_applied": self.reduced.applied,
            **{report: getattr(self, step).report for step, report in _REPORTS.items()},
        }
        (folder / "prepared.json").write_text(json.dumps(reports, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Prepared:
        folder = Path(folder)
        npz, meta = folder / "prepared.npz", folder / "prepared.json"
        for path in (npz, meta):
            if not path.exists():
                raise DataError(f"{path}: missing; run `popseg stage prepare` (or `dvc repro`)")
        reports = json.loads(meta.read_text())
        fields: dict[str, dict] = {step: {"report": reports[r]} for step, r in _REPORTS.items()}
        with np.load(npz, allow_pickle=False) as arrays:
            for name, (step, attribute) in _ARRAYS.items():
                if name in _OPTIONAL_ARRAYS and name not in arrays.files:
                    fields[step][attribute] = None
                else:
                    fields[step][attribute] = arrays[name]
        return cls(
            names=list(reports["feature_names"]),
            imputed=impute.ImputeResult(**fields["imputed"]),
            scaled=scale.ScaleResult(**fields["scaled"]),
            reduced=reduce.ReduceResult(**fields["reduced"], applied=bool(reports["pca_applied"])),
        )


def prepare(params: Params, data: IngestedData) -> Prepared:
    """Impute, scale and reduce the ingested rows in memory."""
    names = data.feature_columns
    imputed = impute.impute(data.features, params.impute, params.cluster.backend)
    scaled = scale.scale(imputed.values, names, params.scale)
    reduced = reduce.reduce(scaled.values, names, params.reduce)
    # Every later step reads the reduced values (and the imputed ones, in original units);
    # the scaled ones were only the projection's input: not kept (80 MB on 500k x 20).
    scaled = replace(scaled, values=None)
    return Prepared(names=names, imputed=imputed, scaled=scaled, reduced=reduced)
