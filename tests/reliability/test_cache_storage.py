"""The signed result storage the cached steps persist to: what Prefect's own ResultStore does
with it, file modes, a refused key file, and a record that names another serializer."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import stat

import pytest
from prefect.results import ResultStore

from flows import result_cache, result_codec
from flows.stages import Prepared
from tasks.impute import ImputeResult


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def storage(tmp_path):
    (tmp_path / "storage").mkdir(mode=0o755)
    return result_cache.SignedResultStorage(
        basepath=str(tmp_path / "storage"), key_path=str(tmp_path / "popseg-cache.key")
    )


def _store(storage):
    # A fresh ResultStore each time: nothing served from Prefect's in-memory cache.
    return ResultStore(
        result_storage=storage,
        serializer=storage.serializer(),
        cache_result_in_memory=False,
    )


def _sample():
    import numpy as np

    imputed = ImputeResult(np.ones((2, 2)), np.array([True, True]), np.zeros(2), {"n": 1})
    return {"names": ["a", "b"], "imputed": imputed}


def test_prefect_writes_and_reads_back_through_the_signed_storage(storage, tmp_path):
    _store(storage).write(_sample(), key="popseg-prepare-abc")
    assert _store(storage).exists("popseg-prepare-abc")
    back = _store(storage).read("popseg-prepare-abc").result
    assert back["names"] == ["a", "b"] and back["imputed"].report == {"n": 1}
    folder = tmp_path / "storage"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Small arrays stay in the record: no array folder.
    assert [path.name for path in folder.iterdir()] == ["popseg-prepare-abc"]
    assert stat.S_IMODE((folder / "popseg-prepare-abc").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "popseg-cache.key").stat().st_mode) == 0o600
    record = json.loads((folder / "popseg-prepare-abc").read_bytes().partition(b"\n")[2])
    assert record["metadata"]["serializer"] == {
        "type": "popseg-json",
        "arrays": str(folder / "arrays"),
    }


def test_a_signed_record_that_names_pickle_is_refused_unread(storage, tmp_path, caplog):
    marker = tmp_path / "pwned"
    record = {
        "metadata": {
            "storage_key": "popseg-train-abc",
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "pickle"},
            "prefect_version": "3.8.8",
            "storage_block_id": None,
        },
        "result": base64.encodebytes(pickle.dumps(_Touch(marker))).decode(),
    }
    # Even signed with the project's key (a bug, or a leaked key), it is not loaded.
    storage.write_path("popseg-train-abc", json.dumps(record).encode(), _sync=True)
    with caplog.at_level(logging.WARNING, logger="flows.result_cache"):
        assert not _store(storage).exists("popseg-train-abc")
        with pytest.raises(result_cache.CacheFormatError, match="names serializer"):
            _store(storage).read("popseg-train-abc")
    assert not marker.exists()
    assert "popseg-train-abc: rejected cached result" in caplog.text


def test_an_entry_copied_under_another_key_is_refused(storage, tmp_path):
    _store(storage).write(_sample(), key="popseg-prepare-one")
    folder = tmp_path / "storage"
    (folder / "popseg-prepare-two").write_bytes((folder / "popseg-prepare-one").read_bytes())
    assert _store(storage).exists("popseg-prepare-one")
    assert not _store(storage).exists("popseg-prepare-two")


def test_a_key_file_others_can_read_is_replaced(storage, tmp_path, caplog):
    _store(storage).write(_sample(), key="popseg-prepare-abc")
    key = tmp_path / "popseg-cache.key"
    old = key.read_bytes()
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="flows.result_cache"):
        # Entries signed with a key others could read are no longer trusted: a miss.
        assert not _store(storage).exists("popseg-prepare-abc")
    assert f"{key}: cache key refused (mode 644" in caplog.text
    assert key.read_bytes() != old and stat.S_IMODE(key.stat().st_mode) == 0o600
    _store(storage).write(_sample(), key="popseg-prepare-abc")
    assert _store(storage).exists("popseg-prepare-abc")


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "sub/dir", ".hidden", ""])
def test_paths_outside_the_folder_are_refused(storage, name):
    with pytest.raises(ValueError, match="not a cache entry name"):
        storage.write_path(name, b"{}", _sync=True)
    with pytest.raises(ValueError, match="not a cache entry name"):
        storage.read_path(name, _sync=True)


def test_the_prepared_dataclass_is_allow_listed():
    assert result_codec.result_types()["Prepared"] is Prepared


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_fifo_or_symlink_in_place_of_an_entry_is_refused_without_blocking(
    storage, tmp_path, kind, caplog
):
    _store(storage).write(_sample(), key="popseg-prepare-abc")
    entry = tmp_path / "storage" / "popseg-prepare-xyz"
    if kind == "fifo":
        os.mkfifo(entry)  # opening it for reading without O_NONBLOCK would wait forever
    else:
        entry.symlink_to(tmp_path / "storage" / "popseg-prepare-abc")
    with caplog.at_level(logging.WARNING, logger="flows.result_cache"):
        assert not _store(storage).exists("popseg-prepare-xyz")
    assert "popseg-prepare-xyz: rejected cached result" in caplog.text


def _large():
    import numpy as np

    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(40_000, 3))  # 960 kB: above FILE_MIN_BYTES, a file of its own
    imputed = ImputeResult(matrix, np.ones(3, dtype=bool), matrix.mean(axis=0), {"n": 1})
    return {"names": ["a", "b", "c"], "imputed": imputed, "again": matrix}


def _array_files(tmp_path):
    return sorted((tmp_path / "storage" / "arrays").glob("*.npy"))


def test_large_arrays_are_npy_files_beside_the_record_and_come_back_equal(storage, tmp_path):
    import numpy as np

    value = _large()
    _store(storage).write(value, key="popseg-prepare-big")
    files = _array_files(tmp_path)
    # One file for the matrix, however often it appears; the record holds no copy of it.
    assert len(files) == 1 and files[0].stat().st_size > value["again"].nbytes
    assert (tmp_path / "storage" / "popseg-prepare-big").stat().st_size < 20_000
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    back = _store(storage).read("popseg-prepare-big").result
    np.testing.assert_array_equal(back["imputed"].values, value["imputed"].values)
    np.testing.assert_array_equal(back["again"], value["again"])
    assert back["imputed"].values.flags.writeable


def _damage(path, how):
    if how == "changed":
        content = bytearray(path.read_bytes())
        content[-1] ^= 1
        path.write_bytes(bytes(content))
    elif how == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 8)
    elif how == "missing":
        path.unlink()
    else:
        target = path.with_name("elsewhere.npy")
        path.rename(target)
        path.symlink_to(target)


@pytest.mark.parametrize("how", ["changed", "truncated", "missing", "symlink"])
def test_a_damaged_array_file_is_refused_by_name_and_the_entry_rewritten(
    storage, tmp_path, how, caplog
):
    _store(storage).write(_large(), key="popseg-prepare-big")
    (path,) = _array_files(tmp_path)
    _damage(path, how)
    with caplog.at_level(logging.WARNING, logger="flows.result_cache"):
        # Prefect's exists() decodes the record: a refusal is a cache miss, the step reruns.
        assert not _store(storage).exists("popseg-prepare-big")
    assert f"rejected cached result: {path}" in caplog.text
    with pytest.raises(result_cache.CacheFormatError, match=path.name):
        _store(storage).read("popseg-prepare-big")
    # The rerun's write replaces the damaged file; the entry serves again.
    _store(storage).write(_large(), key="popseg-prepare-big")
    assert _store(storage).exists("popseg-prepare-big")
    assert not path.is_symlink() and path.is_file()


def test_a_record_pointing_at_another_array_folder_is_refused(storage, tmp_path):
    # The array folder is part of the signed serializer: a record naming another one is not
    # read, so a signed record cannot be pointed at files someone else wrote.
    foreign = result_cache.PopsegJsonSerializer(arrays=str(tmp_path / "elsewhere"))
    store = ResultStore(result_storage=storage, serializer=foreign, cache_result_in_memory=False)
    store.write(_large(), key="popseg-prepare-big")
    assert not _store(storage).exists("popseg-prepare-big")
    with pytest.raises(result_cache.CacheFormatError, match="names serializer"):
        _store(storage).read("popseg-prepare-big")


def _age(path, seconds):
    """Set ``path``'s mtime ``seconds`` into the past (not following a symlink)."""
    import time

    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_prune_removes_expired_records_and_their_arrays_and_keeps_live_ones(storage, tmp_path):
    import time

    import numpy as np

    folder = tmp_path / "storage"
    _store(storage).write(_large(), key="popseg-prepare-old")
    (old_array,) = _array_files(tmp_path)
    for path in (folder / "popseg-prepare-old", old_array):
        _age(path, 8 * 86400)
    value = _large()
    other = value["again"] + 1.0  # other arrays: files of their own
    value["again"] = other
    value["imputed"] = ImputeResult(other, np.ones(3, dtype=bool), other.mean(axis=0), {"n": 1})
    _store(storage).write(value, key="popseg-train-new")
    live_arrays = set(_array_files(tmp_path)) - {old_array}
    assert len(live_arrays) >= 1
    files, size = result_cache.prune(folder, max_age_s=7 * 86400, now=time.time())
    assert not (folder / "popseg-prepare-old").exists() and not old_array.exists()
    assert files == 2 and size > value["again"].nbytes
    assert set(_array_files(tmp_path)) == live_arrays
    back = _store(storage).read("popseg-train-new").result
    assert float(back["again"][0, 0]) == float(value["again"][0, 0])


def test_an_array_rewritten_by_a_newer_record_outlives_the_older_record(storage, tmp_path):
    folder = tmp_path / "storage"
    _store(storage).write(_large(), key="popseg-prepare-old")
    _age(folder / "popseg-prepare-old", 8 * 86400)
    (shared,) = _array_files(tmp_path)
    _age(shared, 8 * 86400)
    # The same arrays under a new key: the file is written again (fresh mtime) and stays.
    _store(storage).write(_large(), key="popseg-prepare-new")
    assert result_cache.prune(folder, max_age_s=7 * 86400)[0] == 1
    assert shared.exists() and not (folder / "popseg-prepare-old").exists()
    assert _store(storage).exists("popseg-prepare-new")


def test_prune_touches_only_popseg_files(storage, tmp_path):
    folder, arrays = tmp_path / "storage", tmp_path / "storage" / "arrays"
    arrays.mkdir(parents=True)
    foreign = {
        folder / "someone-elses-result": b"not signed by popseg",
        arrays / "notes.npy": b"not a sha256 name",
        folder / ".hidden": b"a dot file that is not ours",
    }
    ours = {
        folder / ".popseg-prepare-x.abc123": b"a killed write",
        arrays / ".npy-abc123": b"a killed array write",
        arrays / ("0" * 64 + ".npy"): b"an expired array",
    }
    for path, content in {**foreign, **ours}.items():
        path.write_bytes(content)
        _age(path, 30 * 86400)
    target = folder / "popseg-train-linked"
    target.symlink_to(folder / "someone-elses-result")
    _age(target, 30 * 86400)
    fresh_temporary = arrays / ".npy-inprogress"
    fresh_temporary.write_bytes(b"a write in progress")
    files, _ = result_cache.prune(folder, max_age_s=86400)
    assert files == len(ours)
    assert all(path.exists() for path in foreign) and target.is_symlink()
    assert not any(path.exists() for path in ours)
    assert fresh_temporary.exists()


def test_prune_of_a_missing_folder_removes_nothing(tmp_path):
    assert result_cache.prune(tmp_path / "no-such-folder", max_age_s=0) == (0, 0)


def test_a_cache_hit_decodes_the_record_once(storage, monkeypatch):
    """Prefect's exists() decodes the record and drops it, then read() decodes it again: the
    second takes the first's object (array files read and hashed once), and only once."""
    import numpy as np

    _store(storage).write(_large(), key="popseg-prepare-big")
    calls = []
    real = result_cache.decode

    def counting(blob, folder=None):
        calls.append(folder)
        return real(blob, folder)

    monkeypatch.setattr(result_cache, "decode", counting)
    store = _store(storage)
    assert store.exists("popseg-prepare-big")
    first = store.read("popseg-prepare-big").result
    assert len(calls) == 1
    np.testing.assert_array_equal(first["again"], _large()["again"])
    # Handed out once: the next read decodes afresh, so it shares nothing with the first.
    second = _store(storage).read("popseg-prepare-big").result
    assert len(calls) == 2 and second["again"] is not first["again"]


def test_an_expired_record_is_a_plain_miss_without_reading_its_arrays(
    storage, tmp_path, monkeypatch, caplog
):
    import datetime

    store = _store(storage)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    store.write(_large(), key="popseg-prepare-old", expiration=past)
    (path,) = _array_files(tmp_path)
    path.unlink()  # would be refused with a warning if it were read
    monkeypatch.setattr(result_cache, "decode", lambda *a: pytest.fail("decoded"))
    with caplog.at_level(logging.WARNING, logger="flows.result_cache"):
        assert not _store(storage).exists("popseg-prepare-old")
    assert "rejected" not in caplog.text
