"""Deploy targets behind one ``Target`` protocol (``contract.py``), looked up by name:

- ``local`` (``local.py``): a server process on 127.0.0.1, state in ``.popseg/endpoints``;
- ``sagemaker`` (``sagemaker.py``): S3 + a SageMaker endpoint, with boto3; beside it its
  data capture (``sagemaker_capture.py``: the endpoint config's ``DataCaptureConfig`` and the
  capture files read back for `popseg monitor`), batch transform (``sagemaker_batch.py``:
  `popseg score --target sagemaker`) and autoscaling (``sagemaker_autoscaling.py``).

A new target is one module with a class that follows the protocol, added to ``TARGETS``; its
``extra`` names the optional dependencies it needs (``tasks/extras.py``), checked on lookup.
"""

from __future__ import annotations

from tasks.config import DeployConfig
from tasks.deploy.contract import Target, TargetOptions
from tasks.deploy.local import LocalTarget
from tasks.deploy.sagemaker import SagemakerTarget
from tasks.errors import DeployError
from tasks.extras import require

TARGETS: dict[str, type] = {LocalTarget.name: LocalTarget, SagemakerTarget.name: SagemakerTarget}


def get_target(name: str, config: DeployConfig, options: TargetOptions | None = None) -> Target:
    """The target called ``name``, built from the ``deploy`` config and per-call options."""
    if name not in TARGETS:
        raise DeployError(
            f"--target {name!r}: no such deploy target; choose {' or '.join(TARGETS)}"
        )
    target = TARGETS[name]
    if target.extra:
        require(target.extra, f"--target {name}")
    return target(config, options)
