"""Prefect's result cache without pickle: the cached prepare/train results are written as JSON
(numpy arrays in an npz, loaded with ``allow_pickle=False``) by a serializer that knows only
popseg's own result types, into a storage that signs every file with an HMAC-SHA256 keyed by
a per-project secret and checks it before Prefect reads a byte.

Why a storage of our own and not only a serializer: a Prefect result file names its own
serializer (``metadata.serializer``), and ``ResultRecord.deserialize`` honours it, so a file
that names ``pickle`` would be unpickled whatever the task asked for. Here popseg reads the
file first: a file whose signature does not match, or that names another serializer, is
refused with a warning naming it, Prefect sees a cache miss, and the step runs again.

Files are 0600 in a 0700 folder (``PREFECT_LOCAL_STORAGE_PATH``, by default
``PREFECT_HOME/storage``); the secret is ``PREFECT_HOME/popseg-cache.key`` (0600).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import Field

logger = logging.getLogger("flows.result_cache")

SERIALIZER_TYPE = "popseg-json"
FORMAT = "popseg-cache/1"
KEY_FILE = "popseg-cache.key"
_HEADER = b"popseg-cache 1 "
_KEY_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
# Array dtypes an npz holds without pickle: bool, ints, floats, complex, bytes, str, dates.
_ARRAY_KINDS = frozenset("biufcSUmM")
_SCALAR_KINDS = frozenset("biufU")


class CacheFormatError(ValueError):
    """A cached result that is not one popseg wrote (bad signature, unknown type, bad JSON)."""


# --------------------------------------------------------------------------- the codec


def _result_types() -> dict[str, type]:
    """The only classes a cached result may contain (looked up here, never imported by a
    name read from the file)."""
    from flows.stages import Prepared, Trained
    from tasks.chain import SegmentationChain
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
    )
    return {cls.__name__: cls for cls in classes}


def encode(obj: Any) -> bytes:
    """A result as UTF-8 JSON: the object tree with type tags, arrays in a base64 npz."""
    arrays: list[np.ndarray] = []
    tree = _Encoder(arrays, _result_types()).value(obj)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{f"a{i}": array for i, array in enumerate(arrays)})
    document = {
        "format": FORMAT,
        "root": tree,
        "arrays": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


def decode(blob: bytes) -> Any:
    """The inverse of `encode`; anything else is a `CacheFormatError`."""
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
        return _Decoder(arrays, _result_types()).value(document["root"])
    except CacheFormatError:
        raise
    except (KeyError, TypeError, ValueError, OSError, binascii.Error) as error:
        raise CacheFormatError(
            f"malformed cached result ({type(error).__name__}: {error})"
        ) from None


class _Encoder:
    def __init__(self, arrays: list[np.ndarray], types: dict[str, type]) -> None:
        self.arrays = arrays
        self.types = types

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
            items = [None if pd.isna(item) else str(item) for item in values.tolist()]
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
    def __init__(self, arrays: dict[str, np.ndarray], types: dict[str, type]) -> None:
        self.arrays = arrays
        self.types = types

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
        if tag in ("ndarray", "objects"):
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


class PopsegJsonSerializer(Serializer):
    """Prefect serializer for popseg's cached results: JSON + npz, an allow-list of types."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return encode(obj)

    def loads(self, blob: bytes) -> Any:
        return decode(blob)


# --------------------------------------------------------------------------- the storage


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


def _write_private(path: Path, content: bytes, replace: bool = True) -> None:
    """Write ``content`` to ``path`` atomically, mode 0600. With ``replace=False`` an
    existing file wins (FileExistsError)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:  # mkstemp: 0600
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _read_private(path: Path) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and its stat; a symlink, FIFO or device is an OSError before
    a byte is read (O_NONBLOCK: opening a FIFO does not wait for a writer)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read(), info


def cache_secret(key_path: Path) -> bytes:
    """The project's HMAC key: created once (0600, 32 random bytes); a key file another user
    could read or write is replaced, which only makes the existing entries miss."""
    try:
        secret, info = _read_private(key_path)
    except FileNotFoundError:
        _private_dir(key_path.parent)
        # Another process may make it first: then its key is the one to use.
        with contextlib.suppress(FileExistsError):
            _write_private(key_path, secrets.token_bytes(_KEY_BYTES), replace=False)
        return cache_secret(key_path)
    except OSError as error:  # a symlink (O_NOFOLLOW), a folder, a FIFO
        reason = error.strerror or str(error)
    else:
        reason = None
        if info.st_uid != os.getuid():
            reason = "not a file of this user"
        elif info.st_mode & 0o077:
            reason = f"mode {stat.S_IMODE(info.st_mode):o}, others may read it"
        elif len(secret) != _KEY_BYTES:
            reason = "wrong length"
    if reason is None:
        return secret
    logger.warning(
        "%s: cache key refused (%s); making a new one (cached results made before will be "
        "recomputed)",
        key_path,
        reason,
    )
    secret = secrets.token_bytes(_KEY_BYTES)
    _write_private(key_path, secret)  # os.replace: over the file or link itself
    return secret


def _mac(secret: bytes, name: str, content: bytes) -> bytes:
    # The file name is signed too: a valid entry copied over another key's file is refused.
    message = _HEADER + name.encode() + b"\0" + content
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


class SignedResultStorage(WritableFileSystem):
    """Result storage for the cached steps: flat files under ``basepath``, each one
    ``popseg-cache 1 <hmac>\\n<Prefect result record>``, written 0600 and atomically, read
    back only when the HMAC matches and the record names popseg's serializer."""

    _block_type_name = "Popseg Signed Result Storage"

    basepath: str = Field(description="folder of the cached results")
    key_path: str = Field(description="the HMAC key file")

    def _file(self, path: str) -> Path:
        """An entry's file: a bare name, or a path straight inside ``basepath``."""
        folder, candidate = Path(self.basepath), Path(str(path))
        name = candidate.name if candidate.parent == folder else str(path)
        if not _NAME.fullmatch(name):
            raise ValueError(f"{str(path)!r}: not a cache entry name")
        return folder / name

    def _resolve_path(self, path: str) -> Path:
        # What Prefect asks a storage without a document id for (its folder for "").
        return Path(self.basepath) if not path else self._file(path)

    def read_verified(self, path: str) -> bytes:
        target = self._file(path)
        try:
            data, _ = _read_private(target)
        except FileNotFoundError:
            raise  # a plain cache miss: nothing to warn about
        except OSError as error:
            self._refuse(target, error.strerror or str(error))
        header, _, content = data.partition(b"\n")
        if not header.startswith(_HEADER):
            self._refuse(target, "not signed by popseg")
        expected = _mac(cache_secret(Path(self.key_path)), target.name, content)
        if not hmac.compare_digest(header[len(_HEADER) :], expected):
            self._refuse(target, "signature does not match: changed, or made with another key")
        try:
            serializer = json.loads(content)["metadata"]["serializer"]
        except (ValueError, KeyError, TypeError):
            self._refuse(target, "not a Prefect result record")
        if serializer != {"type": SERIALIZER_TYPE}:
            self._refuse(target, f"names serializer {serializer!r}, not {SERIALIZER_TYPE!r}")
        return content

    def _refuse(self, target: Path, reason: str) -> NoReturn:
        logger.warning("%s: rejected cached result (%s); the step runs again", target, reason)
        raise CacheFormatError(f"{target}: {reason}")

    def write_signed(self, path: str, content: bytes) -> str:
        target = self._file(path)
        _private_dir(target.parent)
        mac = _mac(cache_secret(Path(self.key_path)), target.name, content)
        _write_private(target, _HEADER + mac + b"\n" + content)
        return str(target)

    async def aread_path(self, path: str) -> bytes:
        return self.read_verified(path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self.read_verified(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_signed(path, content)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return self.write_signed(path, content)


def local_storage() -> SignedResultStorage:
    """The signed storage in Prefect's local result folder (not yet saved on the server)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return SignedResultStorage(
        basepath=str(Path(settings.results.local_storage_path).expanduser().resolve()),
        key_path=str((Path(settings.home).expanduser() / KEY_FILE).resolve()),
    )


_saved: dict[tuple[str, str, str], SignedResultStorage] = {}


def saved_storage() -> SignedResultStorage:
    """`local_storage`, saved once per process and API as a block document: Prefect takes a
    storage block as a task's ``result_storage`` only once it has a document id."""
    from prefect.settings import get_current_settings

    storage = local_storage()
    api = str(get_current_settings().api.url)
    memo = (api, storage.basepath, storage.key_path)
    if memo not in _saved:
        from prefect.exceptions import ObjectAlreadyExists

        name = "popseg-cache-" + hashlib.sha256(storage.basepath.encode()).hexdigest()[:16]
        try:
            storage.save(name, overwrite=True, _sync=True)
        except ObjectAlreadyExists:
            # Another run registered the block type or schema between our read and create
            # (two first runs at once); now it exists, so the second try reads it.
            storage.save(name, overwrite=True, _sync=True)
        _saved[memo] = storage
    return _saved[memo]
