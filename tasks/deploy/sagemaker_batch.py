"""Batch scoring on SageMaker: a batch transform job running the same model package as an
endpoint, its answers joined back to the row ids.

``popseg score --target sagemaker --data s3://.../table.csv --output s3://.../run/``:

1. the table is read and its features taken as `popseg score` takes them
   (`tasks.score.score_inputs`); the feature rows, in the model's order, without ids or a
   header, are written to ``<output>/input/<name>.csv`` (ids stay here: the model only sees
   features, and a header line would be a record of its own once the file is split);
2. the version's package is uploaded and a SageMaker model created from it
   (`tasks.deploy.sagemaker.create_model`, as for an endpoint);
3. a transform job reads that file split by line (``SplitType=Line``, ``MultiRecord``
   mini-batches up to 6 MB, ``text/csv``), answers ``application/json`` and assembles the
   answers by line into ``<output>/<name>.csv.out``: one ``{"predictions": [...]}`` line per
   mini-batch, in input order;
4. the job is polled until it ends, its status logged as it changes;
5. the predictions are joined back to the ids by position (their count must equal the row
   count) and written to ``<output>/scores.csv`` (id, segment, distance_to_cluster, and
   membership_probability for a Gaussian mixture, as `popseg score` writes locally); the
   SageMaker model is deleted, the package kept.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from tasks.chain import SegmentationChain
from tasks.config import DeployConfig, Params
from tasks.deploy.contract import PROBABILITY, rows_to_csv
from tasks.deploy.sagemaker import (
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_RUN_ID,
    _clients,
    _step,
    create_model,
    resolve_settings,
    sklearn_image_uri,
)
from tasks.errors import DataError, DeployError
from tasks.package import RegisteredChain
from tasks.score import score_inputs, scores_table

logger = logging.getLogger(__name__)

MAX_PAYLOAD_MB = 6  # SageMaker's largest mini-batch, as its endpoint request limit
SCORES_FILE = "scores.csv"
_ENDED = ("Completed", "Failed", "Stopped")


def _s3_uri(uri: str, option: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI given to ``option``."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise DeployError(f"{option} {uri!r}: a sagemaker batch transform needs an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def batch_locations(data: str, output: str) -> dict[str, str]:
    """Where the job reads and writes, all under ``output`` (a folder)."""
    _s3_uri(data, "--data")
    _s3_uri(output, "--output")
    root = output.rstrip("/")
    name = PurePosixPath(data[5:]).stem + ".csv"
    return {
        "input": f"{root}/input/{name}",
        "output_path": root,
        "transform_output": f"{root}/{name}.out",  # SageMaker: <S3OutputPath>/<input file>.out
        "scores": f"{root}/{SCORES_FILE}",
    }


def _put(s3, uri: str, body: bytes, content_type: str) -> None:
    bucket, key = _s3_uri(uri, "--output")
    _step(
        f"S3 upload of {uri}",
        s3.put_object,
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType=content_type,
        ServerSideEncryption="AES256",
    )


def read_transform_output(
    payload: bytes, source: str, n_rows: int, mixture: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(segments, distances, membership probabilities) from a transform output assembled by
    line: one JSON answer of inference.py per mini-batch, in input order. Their count must be
    the input's row count. The probabilities are read for a Gaussian mixture (``mixture``),
    whose every answer must carry one; None otherwise."""
    segments: list[int] = []
    distances: list[float] = []
    probabilities: list[float] = []
    keys = ["closest_cluster", "distance_to_cluster", *([PROBABILITY] if mixture else [])]
    expected = '{"predictions": [{' + ", ".join(f'"{key}"' for key in keys) + "}, ...]}"
    for number, line in enumerate(payload.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            predictions = json.loads(line)["predictions"]
            for prediction in predictions:
                segments.append(int(prediction["closest_cluster"]))
                distances.append(_number(prediction["distance_to_cluster"]))
                if mixture:
                    probabilities.append(_number(prediction[PROBABILITY]))
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f"{source}: line {number} is not a prediction answer ({expected})"
            ) from None
    if len(segments) != n_rows:
        raise DataError(
            f"{source}: {len(segments)} predictions for {n_rows} input rows; the answers "
            "cannot be joined back to the ids"
        )
    return (
        np.asarray(segments, dtype=np.int64),
        np.asarray(distances, dtype=np.float64),
        np.asarray(probabilities, dtype=np.float64) if mixture else None,
    )


def _number(value: Any) -> float:
    """An answer's number; null (a value inference.py could not give) is NaN."""
    return np.nan if value is None else float(value)


def wait_for_job(sagemaker, job_name: str, config: DeployConfig) -> dict[str, Any]:
    """Poll the job until it ends (logging each status change and the time taken); a failed,
    stopped or timed-out job is a DeployError with SageMaker's reason."""
    started = time.monotonic()
    last = None
    while True:
        job = _step(
            "describe_transform_job", sagemaker.describe_transform_job, TransformJobName=job_name
        )
        status = job["TransformJobStatus"]
        elapsed = time.monotonic() - started
        if status != last:
            logger.info("transform job %s: %s after %.0f s", job_name, status, elapsed)
            last = status
        if status == "Completed":
            return job
        if status in _ENDED:
            raise DeployError(
                f"transform job {job_name!r} {status.lower()}: "
                f"{job.get('FailureReason') or 'no reason given'}"
            )
        if elapsed > config.wait_timeout_s:
            _step("stop_transform_job", sagemaker.stop_transform_job, TransformJobName=job_name)
            raise DeployError(
                f"transform job {job_name!r} still {status} after {config.wait_timeout_s} s "
                "(deploy.wait_timeout_s); stopped"
            )
        time.sleep(config.waiter_delay_s)


def batch_transform(
    registered: RegisteredChain,
    data: str,
    output: str,
    config: DeployConfig,
    settings: dict[str, str],
    delimiter: str = ",",
) -> dict[str, Any]:
    """Score ``data`` (s3://) with a SageMaker batch transform job; scores land in
    ``<output>/scores.csv``."""
    from botocore.exceptions import ClientError

    locations = batch_locations(data, output)
    chain = SegmentationChain.load(str(registered.chain_dir))
    id_name, ids, rows = score_inputs(chain, data, delimiter)
    region = settings["region"]
    s3, sagemaker = _clients(region)
    image = config.image_uri or sklearn_image_uri(region, config.framework_version)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.urandom(2).hex()}"
    suffix = f"-v{registered.model_version}-{stamp}"
    job_name = "popseg-batch"[: 63 - len(suffix)] + suffix
    tags = [
        {"Key": TAG_MODEL_NAME, "Value": registered.model_name},
        {"Key": TAG_MODEL_VERSION, "Value": registered.model_version},
        {"Key": TAG_RUN_ID, "Value": registered.run_id},
    ]

    _put(s3, locations["input"], rows_to_csv(rows, chain).encode(), "text/csv")
    model_data = create_model(
        s3, sagemaker, registered, config, settings, job_name, image, stamp, tags
    )
    try:
        _step(
            "create_transform_job",
            sagemaker.create_transform_job,
            TransformJobName=job_name,
            ModelName=job_name,
            BatchStrategy="MultiRecord",
            MaxPayloadInMB=MAX_PAYLOAD_MB,
            TransformInput={
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": locations["input"]}
                },
                "ContentType": "text/csv",
                "SplitType": "Line",
                "CompressionType": "None",
            },
            TransformOutput={
                "S3OutputPath": locations["output_path"],
                "Accept": "application/json",
                "AssembleWith": "Line",
            },
            TransformResources={
                "InstanceType": config.instance_type,
                "InstanceCount": config.instance_count,
            },
            Tags=tags,
        )
        logger.info("transform job %s started on %d rows of %s", job_name, len(rows), data)
        job = wait_for_job(sagemaker, job_name, config)
    finally:
        try:
            sagemaker.delete_model(ModelName=job_name)
        except ClientError as error:
            logger.warning("could not delete the batch model %s: %s", job_name, error)

    out_bucket, out_key = _s3_uri(locations["transform_output"], "--output")
    try:
        payload = s3.get_object(Bucket=out_bucket, Key=out_key)["Body"].read()
    except ClientError as error:
        raise DeployError(
            f"transform job {job_name!r} completed but its output "
            f"{locations['transform_output']} cannot be read: "
            f"{error.response.get('Error', {}).get('Code', error)}"
        ) from None
    segments, distances, probabilities = read_transform_output(
        payload, locations["transform_output"], len(rows), chain.mixture is not None
    )
    scores = scores_table(id_name, ids, segments, distances, probabilities)
    _put(s3, locations["scores"], scores.to_csv(index=False).encode(), "text/csv")
    return {
        "model_name": registered.model_name,
        "model_version": registered.model_version,
        "rows": len(scores),
        "output": locations["scores"],
        "segments": {int(k): int(v) for k, v in scores["segment"].value_counts().items()},
        "target": "sagemaker",
        "transform_job": job_name,
        "transform_job_arn": job.get("TransformJobArn"),
        "transform_input": locations["input"],
        "transform_output": locations["transform_output"],
        "model_data": model_data,
        "image": image,
    }


def score_with_batch_transform(
    params: Params,
    data: str,
    output: str,
    version: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    role_arn: str | None = None,
) -> dict[str, Any]:
    """`popseg score --target sagemaker`: a registered version (default: alias champion)
    scored by a batch transform job."""
    import tempfile

    from tasks.package import fetch_registered_chain

    batch_locations(data, output)  # bad URIs fail before the registry is read
    settings = resolve_settings(params.deploy, region, bucket, role_arn)
    with tempfile.TemporaryDirectory(prefix="popseg-batch-") as scratch:
        registered = fetch_registered_chain(params.register_.model_name, version, scratch)
        return batch_transform(
            registered, data, output, params.deploy, settings, params.data.delimiter
        )
