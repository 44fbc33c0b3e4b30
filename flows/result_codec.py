"""The value codec of popseg's result cache: a cached prepare/train result as UTF-8 JSON, the
object tree with type tags, its small numpy arrays in a base64 npz and, given a folder, each
large one (``FILE_MIN_BYTES`` and more) as a raw ``.npy`` file there named by the SHA-256 of
its bytes; and back. The JSON keeps each file's name, SHA-256, dtype and shape, so whatever
signs the JSON (flows/result_cache.py) covers the files too: a file whose bytes, dtype or
shape differ is a `CacheFormatError` naming it. Arrays are written and read with
``allow_pickle=False``. Only an allow-list of popseg's own result types, numpy scalars and
arrays of plain dtypes, and pandas frames, series and indexes are written or read; anything
else is a `CacheFormatError` (reading) or a `TypeError` (writing).

Why files: a 500k x 20 result holds ~270 MB of arrays; as base64 inside JSON inside
Prefect's JSON record it took 5 s and +720 MB to write and twice that to read (Prefect
decodes a record once to check it exists, then again to use it). As files it is one write
and one read of the bytes, plus the hash.

The Prefect serializer and the signed storage around it are in flows/result_cache.py."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

FORMAT = "popseg-cache/2"
#: arrays of at least this many bytes go to a .npy file of their own (given a folder): below
#: it, a file's open, hash and rename cost more than base64 in the JSON.
FILE_MIN_BYTES = 1 << 18
NPY_NAME = re.compile(r"([0-9a-f]{64})\.npy")

# Array dtypes an npz holds without pickle: bool, ints, floats, complex, bytes, str, dates.
_ARRAY_KINDS = frozenset("biufcSUmM")
_SCALAR_KINDS = frozenset("biufU")


class CacheFormatError(ValueError):
    """A cached result that is not one popseg wrote (bad signature, unknown type, bad JSON)."""


def result_types() -> dict[str, type]:
    """The only classes a cached result may contain (looked up here, never imported by a
    name read from the file)."""
    from flows.stages import Prepared, Trained
    from tasks.chain import GaussianMixtureStep, SegmentationChain
    from tasks.cluster import KFit, SweepResult
    from tasks.evaluate import Evaluation
    from tasks.impute import ImputeResult
    from tasks.reduce import ReduceResult
    from tasks.scale import ScaleResult
    from tasks.select import Selection

    classes = (
        Prepared,
        Trained,
        ImputeResult,
        ScaleResult,
        ReduceResult,
        KFit,
        SweepResult,
        Selection,
        Evaluation,
        SegmentationChain,
        GaussianMixtureStep,
    )
    return {cls.__name__: cls for cls in classes}


def encode(obj: Any, folder: Path | None = None) -> bytes:
    """A result as UTF-8 JSON: the object tree with type tags, arrays in a base64 npz, or with
    ``folder`` the large ones in .npy files there."""
    arrays: list[np.ndarray] = []
    tree = _Encoder(arrays, result_types(), folder).value(obj)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{f"a{i}": array for i, array in enumerate(arrays)})
    with buffer.getbuffer() as packed:  # a view: no copy of the npz
        encoded = base64.b64encode(packed)
    buffer.close()
    # The same bytes as json.dumps of {"format", "root", "arrays": <base64 str>}, but the
    # base64 (the bulk: 4/3 of the arrays) is spliced in as bytes instead of going through a
    # str, a JSON str and its encoding - three more copies of it alive at once.
    head = json.dumps({"format": FORMAT, "root": tree}, allow_nan=False, separators=(",", ":"))
    return b"".join((head[:-1].encode(), b',"arrays":"', encoded, b'"}'))


def decode(blob: bytes, folder: Path | None = None) -> Any:
    """The inverse of `encode` (``folder``: where it wrote the large arrays); anything else,
    or an array file that is not the one the JSON names, is a `CacheFormatError`."""
    try:
        document = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as error:
        raise CacheFormatError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CacheFormatError(f"not a {FORMAT} document")
    try:
        packed = base64.b64decode(document["arrays"], validate=True)
        with np.load(io.BytesIO(packed), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return _Decoder(arrays, result_types(), folder).value(document["root"])
    except CacheFormatError:
        raise
    except (KeyError, TypeError, ValueError, OSError, binascii.Error) as error:
        raise CacheFormatError(
            f"malformed cached result ({type(error).__name__}: {error})"
        ) from None


class _Encoder:
    def __init__(
        self, arrays: list[np.ndarray], types: dict[str, type], folder: Path | None
    ) -> None:
        self.arrays = arrays
        self.types = types
        self.folder = folder
        # id -> (array, node) of the arrays already in a file: one file and one hash per
        # array however often it appears. The array is held so that its id is not reused
        # (a frame column's values are a new view each time).
        self.files: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}

    def value(self, value: Any) -> Any:
        # numpy scalars first: np.float64 and np.str_ are also float and str.
        if isinstance(value, np.generic):
            if value.dtype.kind not in _SCALAR_KINDS:
                raise TypeError(f"cannot cache a numpy {value.dtype} scalar")
            return {"$": "scalar", "dtype": value.dtype.str, "v": self.value(value.item())}
        if value is None or isinstance(value, (bool, str)):
            return str(value) if isinstance(value, str) else value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return _float(float(value))
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, tuple):
            return {"$": "tuple", "items": [self.value(item) for item in value]}
        if isinstance(value, dict):
            return {
                "$": "dict",
                "items": [[self.value(key), self.value(item)] for key, item in value.items()],
            }
        if isinstance(value, pd.DataFrame):
            return {
                "$": "frame",
                "columns": self.index(value.columns),
                "index": self.index(value.index),
                "data": [self.values(value.iloc[:, j]) for j in range(value.shape[1])],
            }
        if isinstance(value, pd.Series):
            return {
                "$": "series",
                "name": self.value(value.name),
                "index": self.index(value.index),
                "values": self.values(value),
            }
        if isinstance(value, pd.Index):
            return self.index(value)
        name = type(value).__name__
        if self.types.get(name) is type(value):
            return {
                "$": "object",
                "type": name,
                "state": {attr: self.value(item) for attr, item in vars(value).items()},
            }
        raise TypeError(f"cannot cache a {type(value).__module__}.{type(value).__qualname__}")

    def array(self, array: np.ndarray) -> dict[str, Any]:
        if array.dtype.kind in _ARRAY_KINDS and array.dtype.fields is None:
            if self.folder is not None and array.nbytes >= FILE_MIN_BYTES:
                if id(array) not in self.files:
                    self.files[id(array)] = (array, write_array(self.folder, array))
                return self.files[id(array)][1]
            self.arrays.append(array)
            return {"$": "ndarray", "ref": f"a{len(self.arrays) - 1}"}
        if array.dtype == object:
            return {
                "$": "objects",
                "shape": list(array.shape),
                "items": [self.value(item) for item in array.ravel().tolist()],
            }
        raise TypeError(f"cannot cache an array of dtype {array.dtype}")

    def values(self, values: pd.Series | pd.Index) -> dict[str, Any]:
        """A column or an index's values with their exact pandas dtype."""
        dtype = values.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            codes = values.cat.codes if isinstance(values, pd.Series) else values.codes
            return {
                "$": "categorical",
                "codes": self.array(np.asarray(codes)),
                "categories": self.index(dtype.categories),
                "ordered": bool(dtype.ordered),
            }
        if isinstance(dtype, pd.StringDtype):
            # vectorised: a 500k-row id column item by item took 0.35 s
            objects = np.asarray(values, dtype=object)
            objects[np.asarray(pd.isna(values), dtype=bool)] = None
            items = objects.tolist()
            na = "nan" if dtype.na_value is np.nan else "NA"
            return {"$": "strings", "storage": dtype.storage, "na": na, "items": items}
        if isinstance(dtype, np.dtype):
            return self.array(values.to_numpy(copy=False))
        raise TypeError(f"cannot cache a column of dtype {dtype}")

    def index(self, index: pd.Index) -> dict[str, Any]:
        if isinstance(index, pd.MultiIndex):
            raise TypeError("cannot cache a MultiIndex")
        if isinstance(index, pd.RangeIndex):
            return {
                "$": "range",
                "start": index.start,
                "stop": index.stop,
                "step": index.step,
                "name": self.value(index.name),
            }
        return {"$": "index", "values": self.values(index), "name": self.value(index.name)}


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"$": "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Decoder:
    def __init__(
        self, arrays: dict[str, np.ndarray], types: dict[str, type], folder: Path | None
    ) -> None:
        self.arrays = arrays
        self.types = types
        self.folder = folder

    def value(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if not isinstance(node, dict):
            raise CacheFormatError(f"unexpected JSON value {type(node).__name__}")
        tag = node.get("$")
        if tag == "float":
            return _SPECIAL_FLOATS[node["v"]]
        if tag == "scalar":
            dtype = np.dtype(node["dtype"])
            if dtype.kind not in _SCALAR_KINDS:
                raise CacheFormatError(f"scalar dtype {dtype} not allowed")
            return dtype.type(self.value(node["v"]))
        if tag == "tuple":
            return tuple(self.value(item) for item in node["items"])
        if tag == "dict":
            return {self.value(key): self.value(item) for key, item in node["items"]}
        if tag in ("ndarray", "npy", "objects"):
            return self.array(node)
        if tag == "frame":
            index = self.index(node["index"])
            # Series keep each column's dtype (a DataFrame built from bare object arrays of
            # strings would infer pandas' string dtype).
            columns = {}
            for j, column in enumerate(node["data"]):
                values = self.column(column)
                columns[j] = pd.Series(values, index=index, dtype=values.dtype, copy=False)
            frame = pd.DataFrame(columns, index=index)
            frame.columns = self.index(node["columns"])
            return frame
        if tag == "series":
            index = self.index(node["index"])
            values = self.column(node["values"])
            name = self.value(node["name"])
            return pd.Series(values, index=index, dtype=values.dtype, name=name, copy=False)
        if tag in ("range", "index"):
            return self.index(node)
        if tag == "object":
            return self.instance(node)
        raise CacheFormatError(f"unknown tag {tag!r}")

    def array(self, node: dict[str, Any]) -> np.ndarray:
        if node.get("$") == "ndarray":
            return self.arrays[node["ref"]]
        if node.get("$") == "npy":
            if self.folder is None:
                raise CacheFormatError("the result has array files and no folder was given")
            return read_array(self.folder, node)
        if node.get("$") == "objects":
            items = [self.value(item) for item in node["items"]]
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array.reshape([int(size) for size in node["shape"]])
        raise CacheFormatError(f"expected an array, got {node.get('$')!r}")

    def column(self, node: dict[str, Any]) -> Any:
        """Values with their dtype (numpy array, Categorical or string array)."""
        tag = node.get("$")
        if tag == "categorical":
            return pd.Categorical.from_codes(
                self.array(node["codes"]),
                categories=self.index(node["categories"]),
                ordered=bool(node["ordered"]),
            )
        if tag == "strings":
            na_value = np.nan if node["na"] == "nan" else pd.NA
            dtype = pd.StringDtype(storage=node["storage"], na_value=na_value)
            return pd.array(node["items"], dtype=dtype)
        return self.array(node)

    def index(self, node: dict[str, Any]) -> pd.Index:
        if node.get("$") == "range":
            return pd.RangeIndex(
                int(node["start"]),
                int(node["stop"]),
                int(node["step"]),
                name=self.value(node["name"]),
            )
        if node.get("$") == "index":
            values = self.column(node["values"])
            return pd.Index(values, dtype=values.dtype, name=self.value(node["name"]))
        raise CacheFormatError(f"expected an index, got {node.get('$')!r}")

    def instance(self, node: dict[str, Any]) -> Any:
        cls = self.types.get(node["type"])
        if cls is None:
            raise CacheFormatError(f"type {node['type']!r} is not a popseg result type")
        state = {str(attr): self.value(item) for attr, item in node["state"].items()}
        if dataclasses.is_dataclass(cls):
            expected = {f.name for f in dataclasses.fields(cls)}
            if set(state) != expected:
                raise CacheFormatError(
                    f"{cls.__name__}: fields {sorted(state)} != {sorted(expected)}"
                )
        # The state is what `vars` held when the result was written: set it back as is (no
        # constructor runs, so frozen dataclasses and the chain come back unchanged).
        instance = cls.__new__(cls)
        instance.__dict__.update(state)
        return instance


# --------------------------------------------------------------------------- array files


def private_dir(folder: Path) -> None:
    """``folder`` (and its parents) made if missing; the folder itself 0700."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


def open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """A regular file open for reading, and its stat; a symlink, FIFO or device is an
    OSError before a byte is read (O_NONBLOCK: opening a FIFO does not wait for a writer)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    handle = os.fdopen(descriptor, "rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file")
    return handle, info


class _Hashing:
    """A file that hashes what is written to it (np.lib.format writes in chunks)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.handle.write(data)


def write_array(folder: Path, array: np.ndarray) -> dict[str, Any]:
    """``array`` as ``folder/<sha256>.npy`` (0600, replaced atomically) and the JSON node
    naming it. Always written, even when a file of that name exists: a damaged one is
    replaced, not trusted. Not fsynced: a file a crash left short fails its hash when read
    and the step runs again."""
    private_dir(folder)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".npy-")  # mkstemp: 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            hashing = _Hashing(handle)
            np.lib.format.write_array(hashing, array, allow_pickle=False)
        digest = hashing.sha.hexdigest()
        name = f"{digest}.npy"
        os.replace(temporary, folder / name)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return {
        "$": "npy",
        "file": name,
        "sha256": digest,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
    }


def read_array(folder: Path, node: dict[str, Any]) -> np.ndarray:
    """The array of an ``npy`` node: its file's bytes read once into the array's own memory
    (writable, as the result was), after the SHA-256, dtype and shape the node names are
    checked. Anything else is a `CacheFormatError` naming the file."""
    name = str(node["file"])
    match = NPY_NAME.fullmatch(name)
    if match is None or match.group(1) != node["sha256"]:
        raise CacheFormatError(f"{name!r}: not a cached array file name")
    path = folder / name
    try:
        handle, info = open_regular(path)
        with handle:
            content = bytearray(info.st_size)
            filled = handle.readinto(content) if info.st_size else 0
            if filled != info.st_size or handle.read(1):
                raise OSError(errno.EIO, "changed while read")
    except OSError as error:
        raise CacheFormatError(f"{path}: {error.strerror or error}") from None
    if hashlib.sha256(content).hexdigest() != match.group(1):
        raise CacheFormatError(f"{path}: SHA-256 does not match (changed or truncated)")
    try:
        head = io.BytesIO(bytes(memoryview(content)[:65536]))
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"npy format {version}")
    except ValueError as error:
        raise CacheFormatError(f"{path}: not an npy file ({error})") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject or dtype.fields is not None:
        raise CacheFormatError(f"{path}: dtype {dtype} not allowed")
    if dtype.str != node["dtype"] or list(shape) != list(node["shape"]):
        raise CacheFormatError(f"{path}: dtype or shape differs from the cached result's")
    offset, count = head.tell(), math.prod(shape)
    if len(content) - offset != count * dtype.itemsize:
        raise CacheFormatError(f"{path}: {len(content) - offset} bytes of data, not {count}")
    if count == 0:
        return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    # A view of the bytearray: the file's bytes are the array's memory, no second copy.
    values = np.frombuffer(content, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran else "C")
