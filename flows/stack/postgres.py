"""PostgreSQL for the stack: a cluster under ``.popseg/stack/postgres`` (its Unix socket
there too), listening on 127.0.0.1, one database for MLflow and one for Prefect.

The binaries are Debian's `postgresql` package (found on PATH, else under
/usr/lib/postgresql/<version>/bin; ``POPSEG_POSTGRES_BIN`` names another folder). initdb and
postgres refuse to run as root: as root they run as the unprivileged user ``postgres`` that
the package creates, through `setpriv` (which execs, so the recorded pid is the server's).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from flows.stack.processes import Service, service_environment, spawn, wait_ready
from tasks.errors import StackError

BIN_VARIABLE = "POPSEG_POSTGRES_BIN"
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVICE_USER = "postgres"
SUPERUSER = "popseg"
DATABASES = ("mlflow", "prefect")
INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql)"
STARTUP_TIMEOUT_S = 60.0
# A Unix socket path longer than this is refused by the kernel (sun_path is 108 bytes).
SOCKET_PATH_MAX = 107


def binary(name: str) -> str:
    """The path of a PostgreSQL server binary, or a one-line error naming it."""
    folder = os.environ.get(BIN_VARIABLE)
    if folder:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise StackError(f"PostgreSQL binary {name!r} not found in {BIN_VARIABLE}={folder}")
    found = shutil.which(name)
    if found:
        return found
    import glob

    # Newest major version first.
    folders = sorted(
        glob.glob(DEBIAN_BIN_GLOB), key=lambda p: int(Path(p).parent.name or 0), reverse=True
    )
    for candidate_folder in folders:
        candidate = Path(candidate_folder) / name
        if candidate.is_file():
            return str(candidate)
    raise StackError(
        f"PostgreSQL binary {name!r} not found on PATH nor in {DEBIAN_BIN_GLOB}: {INSTALL_HINT}"
    )


def _as_service_user() -> list[str]:
    """The command prefix that drops root for initdb/postgres; empty when not root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise StackError(
            f"running as root, PostgreSQL needs the unprivileged user {SERVICE_USER!r} "
            f"(created by Debian's postgresql package): {INSTALL_HINT}"
        ) from None
    setpriv = shutil.which("setpriv")
    if not setpriv:
        raise StackError("running as root, PostgreSQL needs `setpriv` (util-linux) to drop root")
    return [setpriv, f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups", "--"]


def _hand_to_service_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVICE_USER)
    for folder, _, files in os.walk(path):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(Path(folder) / name, entry.pw_uid, entry.pw_gid)
    # The service user must be able to reach the folder: every parent searchable by others.
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise StackError(
                f"{parent}: not searchable by user {SERVICE_USER!r}, who runs PostgreSQL here; "
                f"chmod o+x {parent} or bring the stack up in another folder"
            )


def paths(root: Path) -> dict[str, Path]:
    base = root / "postgres"
    return {
        "base": base,
        "data": base / "data",
        "socket": base / "socket",
        "password": base / "password",
        "initdb_log": root / "logs" / "initdb.log",
        "log": root / "logs" / "postgres.log",
    }


def password(root: Path) -> str:
    return paths(root)["password"].read_text().strip()


def initialise(root: Path) -> None:
    """initdb once: superuser ``popseg`` with a generated password (kept 0600 next to the
    cluster), password auth on 127.0.0.1, trust on the socket (its folder is the service
    user's alone)."""
    where = paths(root)
    if (where["data"] / "PG_VERSION").exists():
        return
    initdb = binary("initdb")
    prefix = _as_service_user()
    where["socket"].mkdir(parents=True, exist_ok=True)
    where["initdb_log"].parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(where["data"])  # a half-made cluster from an interrupted initdb
    descriptor = os.open(where["password"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(24) + "\n")
    os.chmod(where["socket"], 0o700)
    _hand_to_service_user(where["base"])
    command = [
        *prefix,
        initdb,
        "--pgdata",
        str(where["data"]),
        "--username",
        SUPERUSER,
        "--pwfile",
        str(where["password"]),
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-instructions",
    ]
    with open(where["initdb_log"], "ab") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise StackError(f"initdb failed (exit {result.returncode}); see {where['initdb_log']}")


def start(root: Path, port: int) -> Service:
    where = paths(root)
    socket_file = where["socket"] / f".s.PGSQL.{port}"
    if len(str(socket_file.resolve())) > SOCKET_PATH_MAX:
        raise StackError(
            f"{socket_file}: the PostgreSQL socket path is longer than {SOCKET_PATH_MAX} bytes; "
            "bring the stack up in a folder with a shorter path"
        )
    command = [
        *_as_service_user(),
        binary("postgres"),
        "-D",
        str(where["data"]),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(where["socket"]),
    ]
    service = spawn("postgres", command, where["log"], port, service_environment({}), root)
    wait_ready(service, lambda: _answers(root, port), STARTUP_TIMEOUT_S, "PostgreSQL")
    create_databases(root, port)
    return service


def connect(root: Path, port: int, database: str = "postgres"):
    import psycopg

    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=SUPERUSER,
        password=password(root),
        dbname=database,
        connect_timeout=3,
        autocommit=True,
    )


def _answers(root: Path, port: int) -> bool:
    import psycopg

    try:
        with connect(root, port) as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def healthy(root: Path, port: int | None) -> bool:
    return bool(port) and _answers(root, port)


def create_databases(root: Path, port: int) -> None:
    with connect(root, port) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')


def url(root: Path, port: int, database: str, driver: str, masked: bool = False) -> str:
    secret = "***" if masked else password(root)
    return f"postgresql+{driver}://{SUPERUSER}:{secret}@127.0.0.1:{port}/{database}"
