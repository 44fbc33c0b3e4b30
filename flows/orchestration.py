"""Prefect run options built from `params.yaml`'s `orchestrate` section: retries with
exponential backoff on the steps that touch the network, result caching keyed on the input
data hash + params + code, and timeouts. Wiring only."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from tasks.config import OrchestrateConfig

logger = logging.getLogger(__name__)

# The cached steps (both engines) start in flows/stages.py; the key covers every project module
# they import, directly or inside a function. The cache's file format (flows/result_cache.py
# and the codec it imports, flows/result_codec.py) is part of the key too: a new format, new
# keys.
_STEP_MODULES = ("flows.stages", "flows.result_cache")
_PACKAGES = ("tasks", "flows")
_ROOT = Path(__file__).resolve().parents[1]
# Errors worth retrying: the network or a remote service, not the user's input.
_TRANSIENT_NAMES = (
    "ConnectionError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "TimeoutError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ThrottlingException",
)
# Missing, refused or expired credentials: no retry can fix them, so they fail at once, even
# when wrapped in an error that is otherwise worth retrying.
_CREDENTIAL_NAMES = ("NoCredentialsError", "PartialCredentialsError", "CredentialsError")
_CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)


# The same faults as a botocore ClientError's code rather than a modeled exception class.
_TRANSIENT_CODES = frozenset(
    {"ThrottlingException", "Throttling", "SlowDown", "RequestTimeout", "ServiceUnavailable"}
)


def _error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)  # botocore ClientError
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _credential_error(error: BaseException) -> bool:
    if any(kind.__name__ in _CREDENTIAL_NAMES for kind in type(error).__mro__):
        return True
    return _error_code(error) in _CREDENTIAL_CODES


def _chain(error: BaseException):
    """The error and the ones it was raised from or while handling (``from None`` hides
    them from tracebacks, not from ``__context__``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException | None) -> bool:
    """True for network trouble (and errors popseg marks ``transient``); False for bad input,
    credential and permission errors, bugs and everything else, which fail at once."""
    if error is None:
        return False
    if any(_credential_error(link) for link in _chain(error)):
        return False
    if getattr(error, "transient", False):
        return True
    from tasks.errors import PopsegError

    if isinstance(error, PopsegError):
        return False
    if _error_code(error) in _TRANSIENT_CODES:
        return True
    return any(kind.__name__ in _TRANSIENT_NAMES for kind in type(error).__mro__)


def retry_when_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # the failed state's exception
            error = raised
    return is_transient(error)


def network_options(config: OrchestrateConfig) -> dict[str, Any]:
    """For tasks that read S3 or call endpoints: retries with backoff 1x, 2x, 4x ... the base."""
    return {
        "retries": config.retries,
        "retry_delay_seconds": [config.retry_backoff_s * 2**i for i in range(config.retries)],
        "retry_jitter_factor": 0.2 if config.retry_backoff_s > 0 else None,
        "retry_condition_fn": retry_when_transient,
        "timeout_seconds": config.task_timeout_s,
    }


def step_options(config: OrchestrateConfig) -> dict[str, Any]:
    return {"timeout_seconds": config.task_timeout_s}


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every module an import statement names, including ``from package import module``
    (relative imports resolved against ``package``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def step_sources(root: Path, entry_modules: tuple[str, ...] = _STEP_MODULES) -> list[Path]:
    """The project's source files the cached steps can run: the entry modules and, transitively,
    every tasks/ or flows/ module they import (at module level or inside a function), with the
    packages' ``__init__`` files on the way."""
    seen: dict[str, Path] = {}
    pending = list(entry_modules)
    while pending:
        name = pending.pop()
        if name in seen or name.split(".")[0] not in _PACKAGES:
            continue
        file = _module_file(root, name)
        if file is None:
            continue
        seen[name] = file
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = name if file.name == "__init__.py" else ".".join(parts[:-1])
        tree = ast.parse(file.read_bytes(), filename=str(file))
        pending += sorted(_imported_names(tree, package))
    return sorted(set(seen.values()))


@cache
def code_fingerprint() -> str:
    """md5 over the source of every module the cached steps run: a code change is a new key.
    Kept in the project's .popseg/ with the sizes and mtimes of every source file: parsing
    the imports costs each command ~0.5-2.5 s; a stat of each file, milliseconds."""
    return cached_source_digest(_ROOT, Path(".popseg") / "code-fingerprint.json")


def _source_stats(root: Path) -> str:
    """Every .py file under the packages with its size and mtime: any edit, new or removed
    module changes it (a superset of `step_sources`, which follows imports)."""
    digest = hashlib.md5(str(root).encode())
    for package in sorted(_PACKAGES):
        for file in sorted((root / package).rglob("*.py")):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def cached_source_digest(root: Path, cache_file: Path) -> str:
    """`source_digest(root)`, reused from ``cache_file`` while no source file under root has
    changed size or mtime."""
    stats = _source_stats(root)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("stats") == stats and isinstance(cached.get("digest"), str):
            return cached["digest"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = source_digest(root)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"stats": stats, "digest": digest}))
        partial.replace(cache_file)
    except OSError:
        pass  # a read-only project: computed each time
    return digest


def source_digest(root: Path) -> str:
    digest = hashlib.md5()
    for file in step_sources(root):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _key(kind: str, *parts: Any) -> str:
    payload = json.dumps([kind, code_fingerprint(), *parts], sort_keys=True, default=str)
    return f"popseg-{kind}-" + hashlib.sha256(payload.encode()).hexdigest()[:32]


def _engine_settings(parameters: dict[str, Any]) -> dict[str, Any]:
    from tasks.engine import MEMORY

    return (parameters.get("engine") or MEMORY).cache_settings(parameters["params"])


def prepare_cache_key(context, parameters: dict[str, Any]) -> str:
    params, data = parameters["params"], parameters["data"]
    sections = {name: params.to_dict()[name] for name in ("features", "impute", "scale", "reduce")}
    return _key(
        "prepare",
        data.md5,
        data.id_column,
        sections,
        params.cluster.backend,
        _engine_settings(parameters),
    )


def train_cache_key(context, parameters: dict[str, Any]) -> str:
    params, data, champion = parameters["params"], parameters["data"], parameters["champion"]
    settings = params.to_dict()
    sections = {
        name: settings[name]
        for name in ("features", "impute", "scale", "reduce", "cluster", "select", "evaluate")
    }
    # Segment ids are matched to the champion's: another champion is another result.
    champion_key = None
    if champion is not None:
        champion_key = hashlib.md5(
            champion.centroids.tobytes() + champion.segment_ids.tobytes()
        ).hexdigest()
    return _key(
        "train", data.md5, data.id_column, sections, champion_key, _engine_settings(parameters)
    )


_PRUNED: set[Path] = set()


def _prune_once(basepath: Path, max_age_s: float) -> None:
    """Once per process and cache folder: drop the expired records and their array files."""
    if basepath in _PRUNED:
        return
    _PRUNED.add(basepath)
    from flows import result_cache

    try:
        files, size = result_cache.prune(basepath, max_age_s)
    except OSError as error:
        logger.warning("%s: expired cache files not removed (%s)", basepath, error)
        return
    if files:
        logger.info("result cache: removed %d expired file(s), %.0f MB", files, size / 2**20)


def cache_options(config: OrchestrateConfig, key_fn) -> dict[str, Any]:
    """Cached results persist in Prefect's local result folder (PREFECT_HOME/storage) as
    signed JSON + npz, large arrays as .npy files beside it, never pickle: see
    flows/result_cache.py."""
    if not config.cache:
        return {}
    import httpx
    from prefect.cache_policies import CacheKeyFnPolicy
    from prefect.exceptions import PrefectException
    from prefect.settings import get_current_settings

    from flows import result_cache

    try:
        storage = result_cache.saved_storage()
    except (OSError, PrefectException, httpx.HTTPError) as error:
        # The cache only saves time: without its storage the steps run uncached.
        folder = get_current_settings().results.local_storage_path
        logger.warning("%s: result cache unavailable (%s); steps run uncached", folder, error)
        return {}
    _prune_once(Path(storage.basepath), config.cache_expiration_h * 3600.0)
    return {
        "cache_policy": CacheKeyFnPolicy(cache_key_fn=key_fn),
        "cache_expiration": timedelta(hours=config.cache_expiration_h),
        "persist_result": True,
        # Prefect's result store would also keep each persisted result in memory until the
        # flow ends (the prepared and trained arrays: ~300 MB on 500k x 20, still held while
        # the gate loads the logged rows again); the flow holds what it still needs itself.
        "cache_result_in_memory": False,
        "result_serializer": storage.serializer(),
        "result_storage": storage,
    }


def alert_training_failed(flow, flow_run, state) -> None:
    """The training flow's on_failure hook: the train_failed alert, with the error's one-line
    message. Runs inside the failed flow run's context, where its parameters (the validated
    params, secrets unmasked) are."""
    from prefect.context import FlowRunContext

    from tasks import notify

    context = FlowRunContext.get()
    params = context.parameters.get("params") if context else None
    if params is None:
        return
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        error = state.message or state.name
    notify.train_failed(
        params.notify,
        params.register_.model_name,
        error,
        data=params.data.path or params.data.dataset,
        flow_run={"id": str(flow_run.id), "name": flow_run.name},
    )
