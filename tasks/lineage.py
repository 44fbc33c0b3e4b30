"""Lineage: which data, which params and which code produced a registered model version,
and getting that exact data back from DVC.

Every training run is tagged with the md5 of its input file (``data_md5``, the hash DVC
records for it), the file's path in the project (``data_path``) and the git commit. DVC
keeps file objects by that md5 in its cache and remotes, so the bytes can be restored even
when no commit's ``dvc.lock`` names them: a ``.dvc`` file naming the md5 is enough for
``dvc pull``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import DataError, RegistryError
from tasks.extras import require

RESTORE_DIR = Path("data/restored")


@dataclass
class Lineage:
    model_name: str
    model_version: str
    run_id: str
    data_md5: str
    data_source: str
    data_path: str | None
    git_commit: str
    aliases: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lineage(model_name: str, version: str) -> Lineage:
    """Read a model version's lineage from its MLflow run."""
    from tasks.register import configure_mlflow
    from tasks.tracking import runs
    from tasks.tracking.layout import RunTag

    uri = configure_mlflow()
    try:
        record = runs.read_version(model_name, str(version))
    except RegistryError:
        raise RegistryError(f"model {model_name!r} has no version {version!r} in {uri}") from None
    if record.data_md5 is None:
        raise RegistryError(
            f"{model_name} v{version} (run {record.run_id}): no {RunTag.DATA_MD5} tag; "
            "the run was not logged by popseg's training"
        )
    return Lineage(
        model_name=model_name,
        model_version=str(version),
        run_id=record.run_id,
        data_md5=record.data_md5,
        data_source=record.data_source,
        data_path=record.data_path,
        git_commit=record.git_commit or "unknown",
        params=dict(sorted(record.params.items())),
        aliases=list(record.aliases),
    )


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_command(*args: str, cwd: str | Path = ".") -> subprocess.CompletedProcess:
    """Run DVC from this environment (``python -m dvc``: no PATH lookup)."""
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )


def restore_data(record: Lineage, output: str | Path | None = None, remote: str | None = None):
    """Bring back the exact bytes a model version was trained on, from the DVC cache or a
    DVC remote, and check their md5. Returns the restored path.

    Writes a small ``.dvc`` file at the project root naming the recorded md5 and the output,
    checks it out (``dvc checkout``, then ``dvc pull`` if the cache lacks it) and removes it
    again. The output must be inside the project (DVC's rule). Needs the 'dvc' extra."""
    require("dvc", "--restore")
    project = Path.cwd().resolve()
    if not (project / ".dvc").is_dir():
        raise DataError(f"{project}: not a DVC project (no .dvc/); run this in the project")
    name = Path(record.data_path or record.data_source or "data").name or "data"
    target = Path(output) if output else RESTORE_DIR / f"v{record.model_version}" / name
    absolute = (project / target).resolve() if not target.is_absolute() else target.resolve()
    try:
        inside = absolute.relative_to(project)
    except ValueError:
        raise DataError(f"--output {target}: must be inside the project ({project})") from None
    if absolute.exists() and file_md5(absolute) == record.data_md5:
        return inside
    if absolute.exists():
        raise DataError(f"{target}: already exists with other contents; choose another --output")
    absolute.parent.mkdir(parents=True, exist_ok=True)
    # The pointer sits at the project root (a .dvc file may not be git-ignored; the restore
    # folder is), naming the output by its path from there.
    pointer = project / f".popseg-restore-{record.data_md5[:12]}.dvc"
    pointer.write_text(
        yaml.safe_dump(
            {"outs": [{"md5": record.data_md5, "path": inside.as_posix(), "hash": "md5"}]}
        )
    )
    try:
        result = dvc_command("checkout", pointer.name, cwd=project)
        if not absolute.exists():
            pull = ["pull", pointer.name] + (["--remote", remote] if remote else [])
            result = dvc_command(*pull, cwd=project)
        if not absolute.exists():
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DataError(
                f"data md5 {record.data_md5} of {record.model_name} v{record.model_version} "
                "is in neither the DVC cache nor the remote "
                f"({detail[-1] if detail else 'dvc gave no detail'}); it is only there if "
                "the file went through `dvc repro` / `dvc add` and `dvc push`"
            )
    finally:
        pointer.unlink(missing_ok=True)
        _drop_gitignore_entry(absolute)
    target = absolute
    # A checkout may link into the cache; make the restored file the user's own copy.
    if target.is_symlink():
        real = target.resolve()
        target.unlink()
        shutil.copyfile(real, target)
    restored_md5 = file_md5(target)
    if restored_md5 != record.data_md5:
        raise DataError(f"{target}: restored md5 {restored_md5} != recorded {record.data_md5}")
    return target.relative_to(project)


def _drop_gitignore_entry(target: Path) -> None:
    """`dvc checkout` adds the file to the folder's .gitignore; undo that for restores."""
    gitignore = target.parent / ".gitignore"
    if not gitignore.exists():
        return
    lines = [line for line in gitignore.read_text().splitlines() if line != f"/{target.name}"]
    if lines:
        gitignore.write_text("\n".join(lines) + "\n")
    else:
        gitignore.unlink()
