"""Prepare: impute -> scale -> reduce, fitted. `Prepared` holds the values the sweep clusters
and every parameter of the serving chain before the centroids; `prepare` fits them on rows
in memory (the Dask engine fits the same parameters from statistics over partitions:
tasks/dask_engine/engine.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import impute, reduce, scale
from tasks.config import Params
from tasks.errors import DataError
from tasks.ingest import IngestedData


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
            "imputed_values": self.imputed.values,
            "kept_rows": self.imputed.kept_rows,
            "fill_values": self.imputed.fill_values,
            "scaled_values": self.scaled.values,
            "log1p_mask": self.scaled.log1p_mask,
            "clip_low": self.scaled.clip_low,
            "clip_high": self.scaled.clip_high,
            "scale_center": self.scaled.center,
            "scale_scale": self.scaled.scale,
            "reduced_values": self.reduced.values,
            "pca_mean": self.reduced.mean,
            "pca_components": self.reduced.components,
            "explained_variance_ratio": self.reduced.explained_variance_ratio,
            "full_explained_variance_ratio": self.reduced.full_explained_variance_ratio,
        }
        with open(folder / "prepared.npz", "wb") as handle:
            np.savez(handle, **arrays)
        reports = {
            "feature_names": self.names,
            "pca_applied": self.reduced.applied,
            "impute": self.imputed.report,
            "scale": self.scaled.report,
            "reduce": self.reduced.report,
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
        with np.load(npz, allow_pickle=False) as arrays:
            a = {name: arrays[name] for name in arrays.files}
        return cls(
            names=list(reports["feature_names"]),
            imputed=impute.ImputeResult(
                values=a["imputed_values"],
                kept_rows=a["kept_rows"],
                fill_values=a["fill_values"],
                report=reports["impute"],
            ),
            scaled=scale.ScaleResult(
                values=a["scaled_values"],
                log1p_mask=a["log1p_mask"],
                clip_low=a["clip_low"],
                clip_high=a["clip_high"],
                center=a["scale_center"],
                scale=a["scale_scale"],
                report=reports["scale"],
            ),
            reduced=reduce.ReduceResult(
                values=a["reduced_values"],
                mean=a["pca_mean"],
                components=a["pca_components"],
                explained_variance_ratio=a["explained_variance_ratio"],
                full_explained_variance_ratio=a["full_explained_variance_ratio"],
                applied=bool(reports["pca_applied"]),
                report=reports["reduce"],
            ),
        )


def prepare(params: Params, data: IngestedData) -> Prepared:
    """Impute, scale and reduce the ingested rows in memory."""
    names = data.feature_columns
    imputed = impute.impute(data.features, params.impute, params.cluster.backend)
    scaled = scale.scale(imputed.values, names, params.scale)
    reduced = reduce.reduce(scaled.values, names, params.reduce)
    return Prepared(names=names, imputed=imputed, scaled=scaled, reduced=reduced)
