"""model.tar.gz: the chain artifact at the root, the serving code in code/, no pickle."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import PackageError
from tasks.package import build_package, package_members, unpack_package
from tests.unit.serving.test_inference import make_chain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def package(tmp_path):
    chain_dir = tmp_path / "chain"
    make_chain().save(str(chain_dir))
    return build_package(chain_dir, tmp_path / "out")  # a folder: model.tar.gz inside


def test_layout_and_verbatim_code(package, tmp_path):
    assert package.name == "model.tar.gz"
    assert package_members(package) == [
        "chain.npz",
        "chain.json",
        "code/inference.py",
        "code/chain.py",
    ]
    unpacked = unpack_package(package, tmp_path / "unpacked")
    assert (unpacked / "code/chain.py").read_bytes() == (ROOT / "tasks/chain.py").read_bytes()
    assert (unpacked / "code/inference.py").read_bytes() == (
        ROOT / "tasks/serving/inference.py"
    ).read_bytes()


def test_no_pickle_anywhere(package, tmp_path):
    unpacked = unpack_package(package, tmp_path / "unpacked")
    with np.load(unpacked / "chain.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)
    for name in ("code/inference.py", "code/chain.py"):
        text = (unpacked / name).read_text()
        assert "import pickle" not in text and "joblib" not in text
        assert "allow_pickle=True" not in text


def test_refuses_a_folder_without_a_chain(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="does not hold a loadable chain"):
        build_package(tmp_path / "empty", tmp_path / "model.tar.gz")


def test_unpack_refuses_unexpected_members(package, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as archive:
        payload = b"x"
        info = tarfile.TarInfo("model.pkl")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(PackageError, match="unexpected member 'model.pkl'"):
        unpack_package(evil, tmp_path / "x")
    with pytest.raises(PackageError, match="pickle-format member"):
        package_members(evil)
