"""Prefect's result cache without pickle: the cached prepare/train results are written as JSON
(small numpy arrays in an npz inside it, large ones as raw .npy files in the storage's
``arrays/`` folder, named by their SHA-256, which the JSON records; all loaded with
``allow_pickle=False``; the codec is flows/result_codec.py) by a serializer that knows only
popseg's own result types, into a storage that signs every record with an HMAC-SHA256 keyed
by a per-project secret and checks it before Prefect reads a byte. The signature covers the
array files through their hashes: a changed, truncated or missing one is refused by name.

Why a storage of our own and not only a serializer: a Prefect result file names its own
serializer (``metadata.serializer``), and ``ResultRecord.deserialize`` honours it, so a file
that names ``pickle`` would be unpickled whatever the task asked for. Here popseg reads the
file first: a file whose signature does not match, or that names another serializer, is
refused with a warning naming it, Prefect sees a cache miss, and the step runs again.

Files are 0600 in 0700 folders (``PREFECT_LOCAL_STORAGE_PATH``, by default
``PREFECT_HOME/storage``, and its ``arrays/``); the secret is
``PREFECT_HOME/popseg-cache.key`` (0600). Array files are shared by the records that hold the
same array; `prune` removes records and array files once no live record can use them (a 500k x
20 training leaves ~270-400 MB of them per cache miss).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from flows.result_codec import (
    FORMAT,
    NPY_NAME,
    CacheFormatError,
    decode,
    encode,
    open_regular,
    private_dir,
)

# The codec's names stay importable from here, where the flows and tests take them.
__all__ = [
    "FORMAT",
    "KEY_FILE",
    "SERIALIZER_TYPE",
    "CacheFormatError",
    "PopsegJsonSerializer",
    "SignedResultStorage",
    "cache_secret",
    "decode",
    "encode",
    "local_storage",
    "prune",
    "saved_storage",
]

logger = logging.getLogger("flows.result_cache")

SERIALIZER_TYPE = "popseg-json"
KEY_FILE = "popseg-cache.key"
_HEADER = b"popseg-cache 1 "
_KEY_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
ARRAYS = "arrays"


def _expired(expiration: Any) -> bool:
    """Whether a record's ``metadata.expiration`` (ISO 8601, UTC) has passed; none or an
    unreadable one is left to Prefect."""
    if not isinstance(expiration, str):
        return False
    try:
        when = datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when <= datetime.datetime.now(datetime.UTC)


class _LastDecoded:
    """The result the last `PopsegJsonSerializer.loads` decoded, given out once more.

    On a cache hit Prefect decodes the record twice: ``ResultStore.exists`` decodes it and
    drops it, then ``read`` decodes it again (for a 500k-row result, ~270 MB of array files
    read and hashed twice). The second decode of the same bytes takes the first one's
    object instead; it is handed out once and forgotten, so no later read shares it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str | None, bytes] | None = None
        self._value: Any = None

    def take(self, key: tuple[str | None, bytes]) -> tuple[bool, Any]:
        with self._lock:
            if self._key != key:
                return False, None
            value, self._key, self._value = self._value, None, None
            return True, value

    def keep(self, key: tuple[str | None, bytes], value: Any) -> None:
        with self._lock:
            self._key, self._value = key, value


_LAST_DECODED = _LastDecoded()


class PopsegJsonSerializer(Serializer):
    """Prefect serializer for popseg's cached results: JSON + npz, large arrays as .npy files
    in ``arrays`` (`SignedResultStorage.serializer` names its own folder); an allow-list of
    types."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)
    arrays: str | None = Field(default=None, description="folder of the large arrays' files")

    def _folder(self) -> Path | None:
        return Path(self.arrays) if self.arrays else None

    def dumps(self, obj: Any) -> bytes:
        return encode(obj, self._folder())

    def loads(self, blob: bytes) -> Any:
        key = (self.arrays, hashlib.sha256(blob).digest())
        found, value = _LAST_DECODED.take(key)
        if found:
            return value
        try:
            value = decode(blob, self._folder())
        except CacheFormatError as error:
            # Prefect takes any error here for a cache miss, silently: say which file it was.
            logger.warning("rejected cached result: %s; the step runs again", error)
            raise
        _LAST_DECODED.keep(key, value)
        return value


# --------------------------------------------------------------------------- the storage


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
    """A regular file's bytes and its stat (`open_regular`: a symlink, FIFO or device is an
    OSError before a byte is read)."""
    handle, info = open_regular(path)
    with handle:
        return handle.read(), info


def cache_secret(key_path: Path) -> bytes:
    """The project's HMAC key: created once (0600, 32 random bytes); a key file another user
    could read or write is replaced, which only makes the existing entries miss."""
    try:
        secret, info = _read_private(key_path)
    except FileNotFoundError:
        private_dir(key_path.parent)
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

    def arrays_folder(self) -> Path:
        return Path(self.basepath) / ARRAYS

    def serializer(self) -> PopsegJsonSerializer:
        """The serializer whose records this storage reads: large arrays in its folder."""
        return PopsegJsonSerializer(arrays=str(self.arrays_folder()))

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
            metadata = json.loads(content)["metadata"]
            serializer = metadata["serializer"]
            expiration = metadata.get("expiration")
        except (ValueError, KeyError, TypeError, AttributeError):
            self._refuse(target, "not a Prefect result record")
        if _expired(expiration):
            # Prefect would decode the whole result (array files read and hashed) before
            # it looks at the expiration: an expired record is a plain miss, unread.
            raise FileNotFoundError(errno.ENOENT, "cached result expired", str(target))
        # Prefect reads the record with the serializer it names, array folder included.
        expected = self.serializer().model_dump()
        if serializer != expected:
            self._refuse(target, f"names serializer {serializer!r}, not {expected!r}")
        return content

    def _refuse(self, target: Path, reason: str) -> NoReturn:
        logger.warning("%s: rejected cached result (%s); the step runs again", target, reason)
        raise CacheFormatError(f"{target}: {reason}")

    def write_signed(self, path: str, content: bytes) -> str:
        target = self._file(path)
        private_dir(target.parent)
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


#: a temporary file (a write in progress) older than this was left by a killed write
STALE_TEMPORARY_S = 3600.0


def _is_signed_record(path: Path) -> bool:
    try:
        handle, _ = open_regular(path)
    except OSError:
        return False
    with handle:
        return handle.read(len(_HEADER)) == _HEADER


def prune(basepath: Path, max_age_s: float, now: float | None = None) -> tuple[int, int]:
    """Remove what no live cache record can use; returns (files, bytes) removed.

    A record is written together with the array files it names (each one rewritten, so with a
    fresh mtime, by every record that names it) and expires ``max_age_s`` (the steps'
    ``cache_expiration``) after its write: a popseg record or array file last written longer
    ago than that is expired or named by expired records only. Temporary files of a killed
    write go after `STALE_TEMPORARY_S`. Only popseg's own files are touched: records that
    carry its signature header, arrays named by their SHA-256, and its temporary names
    (``.popseg-*`` beside the records: the keys are ``popseg-<step>-<hash>``; ``.npy-*``);
    nothing through a symlink."""
    now = time.time() if now is None else now
    removed = [0, 0]

    def remove(entry: os.DirEntry, stale_after_s: float, is_ours) -> None:
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime <= stale_after_s:
                return
            if not is_ours(Path(entry.path)):
                return
            os.unlink(entry.path)
        except FileNotFoundError:
            return  # another process pruned it first
        removed[0] += 1
        removed[1] += info.st_size

    for folder, is_record in ((basepath, True), (basepath / ARRAYS, False)):
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".popseg-" if is_record else ".npy-"):
                remove(entry, STALE_TEMPORARY_S, lambda _: True)
            elif is_record and _NAME.fullmatch(name):
                remove(entry, max_age_s, _is_signed_record)
            elif not is_record and NPY_NAME.fullmatch(name):
                remove(entry, max_age_s, lambda _: True)
    return removed[0], removed[1]


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
