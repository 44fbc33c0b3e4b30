"""User-facing errors. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class PopsegError(Exception):
    """An error caused by the user's input or environment, with a message that names it."""

    exit_code = 1


class ConfigError(PopsegError):
    """A bad params.yaml key or value, or a bad --set override."""

    exit_code = 2


class DataError(PopsegError):
    """An unreadable or unusable input table (names the file, column, row or value)."""

    exit_code = 3


class SourceUnavailableError(DataError):
    """The data source could not be reached (network, S3 endpoint): worth retrying."""

    transient = True


class CredentialsError(DataError):
    """No usable AWS credentials for an s3:// path (names where they were looked for), or a
    credential refused by AWS: never retried."""


class DataValidationError(PopsegError):
    """The data failed the Great Expectations suite; `failures` lists each failed expectation."""

    exit_code = 4

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class RegistryError(PopsegError):
    """A missing model version, alias or run in the MLflow registry."""

    exit_code = 5


class PackageError(PopsegError):
    """A model package that cannot be built or read."""

    exit_code = 6


class GateRefused(PopsegError):
    """The promotion gate refused a version; champion unchanged (the reasons say why)."""

    exit_code = 12


class DeployError(PopsegError):
    """A deployment step failed (names the step); the previous endpoint keeps serving."""

    exit_code = 7


class EndpointError(PopsegError):
    """An endpoint that does not exist, is not running, or answered badly."""

    exit_code = 8


class DriftDetected(PopsegError):
    """`popseg monitor --fail-on-drift` found drift (without the flag drift is a result, exit 0)."""

    exit_code = 9


class ReportError(PopsegError):
    """A report that cannot be written (bad output path, unwritable folder)."""

    exit_code = 10


class DistributedError(PopsegError):
    """The Dask cluster: an unreachable scheduler, lost workers or a failed distributed step
    (names the address and the step); nothing is registered."""

    exit_code = 11


class ApprovalError(PopsegError):
    """An approval that cannot be given: the version is not the candidate, was already
    decided, or was not decided in time; nothing was moved."""

    exit_code = 13


class StackError(PopsegError):
    """The team stack (`popseg stack`): a busy port, a missing binary, a service that did not
    start or is down (names it and its log)."""

    exit_code = 14


class MissingExtraError(PopsegError):
    """A command needs an optional part of popseg that is not installed (names the extra and
    the pip command that adds it; built by ``tasks.extras.missing_extra``)."""

    exit_code = 15

    def __init__(
        self,
        message: str,
        extra: str | None = None,
        feature: str = "",
        module: str | None = None,
    ) -> None:
        super().__init__(message)
        self.extra, self.feature, self.module = extra, feature, module
