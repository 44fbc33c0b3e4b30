"""Package: assemble the fitted stages into one `SegmentationChain` (npz + json artifact),
or a partly fitted one (`transform_chain`, for statistics taken between steps), and build the portable serving package ``model.tar.gz`` from a registered version.

``model.tar.gz`` is what SageMaker's scikit-learn serving container and the local
endpoint load: ``chain.npz`` + ``chain.json`` at the root (loaded with ``allow_pickle=False``)
and ``code/inference.py`` + ``code/chain.py`` (numpy + standard library, Python 3.9). The
registered MLflow pyfunc wraps the very same chain artifact, so every target scores alike.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.chain import CHAIN_JSON, CHAIN_NPZ, GaussianMixtureStep, SegmentationChain
from tasks.errors import PackageError
from tasks.impute import ImputeResult
from tasks.reduce import ReduceResult
from tasks.scale import ScaleResult
from tasks.tracking.layout import CHAMPION, Artifact


def build_chain(
    feature_names: list[str],
    imputed: ImputeResult,
    scaled: ScaleResult,
    reduced: ReduceResult,
    centroids: np.ndarray,
    segment_ids: np.ndarray,
    metadata: dict[str, Any] | None = None,
    categories: dict[str, list[str]] | None = None,
    mixture: GaussianMixtureStep | None = None,
) -> SegmentationChain:
    return SegmentationChain(
        feature_names=feature_names,
        fill_values=imputed.fill_values,
        log1p_mask=scaled.log1p_mask,
        clip_low=scaled.clip_low,
        clip_high=scaled.clip_high,
        scale_center=scaled.center,
        scale_scale=scaled.scale,
        pca_mean=reduced.mean,
        pca_components=reduced.components,
        centroids=centroids,
        segment_ids=segment_ids,
        metadata=metadata,
        categories=categories,
        mixture=mixture,
    )


def transform_chain(
    feature_names: list[str],
    fill_values: np.ndarray,
    log1p_mask: np.ndarray | None = None,
    clip_low: np.ndarray | None = None,
    clip_high: np.ndarray | None = None,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> SegmentationChain:
    """The serving chain's transform fitted up to a step, the later steps the identity (no PCA,
    no centroids): how statistics are taken on rows after the steps fitted so far."""
    d = len(feature_names)
    return SegmentationChain(
        feature_names=feature_names,
        fill_values=fill_values,
        log1p_mask=log1p_mask if log1p_mask is not None else np.zeros(d, dtype=bool),
        clip_low=clip_low if clip_low is not None else np.full(d, -np.inf),
        clip_high=clip_high if clip_high is not None else np.full(d, np.inf),
        scale_center=center if center is not None else np.zeros(d),
        scale_scale=scale if scale is not None else np.ones(d),
        pca_mean=np.zeros(d),
        pca_components=np.eye(d),
        centroids=np.zeros((1, d)),
        segment_ids=np.zeros(1, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- model.tar.gz

_CHAIN_SOURCE = Path(__file__).with_name("chain.py")
_INFERENCE_SOURCE = Path(__file__).parent / "serving" / "inference.py"
PACKAGE_CODE = {"code/inference.py": _INFERENCE_SOURCE, "code/chain.py": _CHAIN_SOURCE}
# Files that must never be in a serving package (pickle-based formats).
_FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle")


def build_package(chain_dir: str | Path, output: str | Path) -> Path:
    """Write ``model.tar.gz``: chain.npz + chain.json at the root, ``code/inference.py`` and
    ``code/chain.py`` (verbatim copies of the project's serving code). Returns the path."""
    chain_dir = Path(chain_dir)
    output = Path(output)
    if output.is_dir() or not output.name.endswith((".tar.gz", ".tgz")):
        output = output / "model.tar.gz"
    try:
        SegmentationChain.load(str(chain_dir))  # refuse to package what would not load
    except (OSError, ValueError, KeyError) as error:
        raise PackageError(f"{chain_dir} does not hold a loadable chain: {error}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    members = {CHAIN_NPZ: chain_dir / CHAIN_NPZ, CHAIN_JSON: chain_dir / CHAIN_JSON}
    members.update(PACKAGE_CODE)
    scratch = output.with_name(output.name + ".tmp")
    with tarfile.open(scratch, "w:gz") as archive:
        for name, source in members.items():
            info = archive.gettarinfo(str(source), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(source.stat().st_mtime)
            with open(source, "rb") as handle:
                archive.addfile(info, handle)
    os.replace(scratch, output)
    return output


def unpack_package(package: str | Path, destination: str | Path) -> Path:
    """Extract a model.tar.gz (only the expected, regular files) into ``destination``."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    expected = {CHAIN_NPZ, CHAIN_JSON, *PACKAGE_CODE}
    with tarfile.open(package, "r:gz") as archive:
        for member in archive.getmembers():
            if member.name not in expected or not member.isfile():
                raise PackageError(f"{package}: unexpected member {member.name!r}")
            archive.extract(member, destination, filter="data")
    missing = [name for name in expected if not (destination / name).is_file()]
    if missing:
        raise PackageError(f"{package}: missing {', '.join(sorted(missing))}")
    return destination


def package_members(package: str | Path) -> list[str]:
    with tarfile.open(package, "r:gz") as archive:
        names = archive.getnames()
    bad = [name for name in names if name.endswith(_FORBIDDEN_SUFFIXES)]
    if bad:
        raise PackageError(f"{package}: pickle-format member(s) {', '.join(bad)}")
    return names


@dataclass(frozen=True)
class RegisteredChain:
    """A registered model version's chain artifact, downloaded to ``chain_dir``."""

    model_name: str
    model_version: str
    run_id: str
    chain_dir: Path
    aliases: tuple[str, ...] = ()


def fetch_registered_chain(
    model_name: str, version: str | None, destination: str | Path, alias: str = CHAMPION
) -> RegisteredChain:
    """Download the chain artifact (run artifact path ``chain/``) of a registered version
    (default: the ``champion`` alias) into ``destination``."""
    from tasks.register import configure_mlflow
    from tasks.tracking import runs

    configure_mlflow()
    model_version = runs.model_version(model_name, version, alias=alias)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    return RegisteredChain(
        model_name=model_name,
        model_version=str(model_version.version),
        run_id=model_version.run_id,
        chain_dir=runs.download(model_version.run_id, Artifact.CHAIN, destination),
        aliases=tuple(getattr(model_version, "aliases", []) or []),
    )


def load_registered_chain(
    model_name: str, version: str | None, destination: str | Path
) -> tuple[RegisteredChain, SegmentationChain]:
    """`fetch_registered_chain`, then the chain loaded from it (what scoring and deploy use)."""
    registered = fetch_registered_chain(model_name, version, destination)
    return registered, SegmentationChain.load(str(registered.chain_dir))


def package_registered(
    model_name: str, version: str | None, output: str | Path
) -> tuple[Path, RegisteredChain]:
    """``popseg package``: the registered chain -> model.tar.gz at ``output``."""
    with tempfile.TemporaryDirectory(prefix="popseg-package-") as scratch:
        registered = fetch_registered_chain(model_name, version, scratch)
        path = build_package(registered.chain_dir, output)
    return path, registered
