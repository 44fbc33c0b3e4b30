"""Bounded load against a local popseg endpoint on 127.0.0.1: latency (p50/p99), throughput
and errors.

    uv run python -m benchmarks.endpoint_load [--requests 2000] [--concurrency 8]
        [--max-seconds 60] [--batch 1 --batch 100] [--endpoint NAME]   # NAME: already deployed

Without --endpoint it serves a synthetic 8-feature, k=5 chain (no MLflow needed) from a
temporary project and stops it afterwards. Each client thread keeps one HTTP/1.1 connection
(http.client) and sends CSV bodies of ``batch`` rows to /endpoints/NAME/invocations; one extra
pass goes through the boto3 sagemaker-runtime client to show its per-call overhead. Bounded
both ways: each batch size stops after ``--requests`` requests or ``--max-seconds``,
whichever comes first; errors (non-200 answers, broken connections) are counted, not retried.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _synthetic_chain(directory: Path, n_features: int = 8, k: int = 5):
    from tasks.chain import SegmentationChain

    rng = np.random.default_rng(0)
    components = np.linalg.qr(rng.normal(size=(n_features, n_features)))[0][:4]
    chain = SegmentationChain(
        feature_names=[f"f{i}" for i in range(n_features)],
        fill_values=np.zeros(n_features),
        log1p_mask=np.zeros(n_features, dtype=bool),
        clip_low=np.full(n_features, -np.inf),
        clip_high=np.full(n_features, np.inf),
        scale_center=np.zeros(n_features),
        scale_scale=np.ones(n_features),
        pca_mean=np.zeros(n_features),
        pca_components=components,
        centroids=rng.normal(size=(k, 4)),
        segment_ids=np.arange(k),
    )
    chain.save(str(directory))
    return chain


def _worker(
    port: int,
    path: str,
    body: bytes,
    count: int,
    latencies: list,
    errors: list,
    deadline: float = float("inf"),
):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "text/csv", "Accept": "application/json"}
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers=headers)
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                errors.append(reply.status)
        except OSError as error:
            errors.append(str(error))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies.append(time.perf_counter() - started)
    connection.close()


def run_load(
    port: int,
    name: str,
    n_features: int,
    requests: int,
    concurrency: int,
    batch: int,
    max_seconds: float = 60.0,
):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(batch, n_features))
    body = ("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n").encode()
    path = f"/endpoints/{name}/invocations"
    _worker(port, path, body, 20, [], [])  # warm-up
    latencies: list[float] = []
    errors: list = []
    per_thread = max(1, requests // concurrency)
    started = time.perf_counter()
    deadline = started + max_seconds
    threads = [
        threading.Thread(
            target=_worker, args=(port, path, body, per_thread, latencies, errors, deadline)
        )
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000.0
    total = len(latencies)
    return {
        "batch_rows": batch,
        "concurrency": concurrency,
        "requests": total,
        "seconds": round(elapsed, 2),
        "errors": len(errors),
        "error_kinds": sorted({str(error)[:80] for error in errors})[:5],
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "requests_per_s": round(total / elapsed, 1),
        "rows_per_s": round(total * batch / elapsed, 1),
        "body_bytes": len(body),
    }


def boto3_latency(url: str, name: str, n_features: int, requests: int = 200):
    from tasks.deploy.contract import runtime_client

    client = runtime_client(url)
    body = ",".join(["0.5"] * n_features)
    client.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        client.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)["Body"].read()
        latencies.append(time.perf_counter() - started)
    ms = np.array(latencies) * 1000.0
    return {
        "client": "boto3 sagemaker-runtime, 1 thread, 1 row",
        "requests": requests,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per batch size")
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--endpoint", help="an already deployed local endpoint (cwd project)")
    parser.add_argument("--output", help="write the results as JSON here")
    options = parser.parse_args()
    batches = options.batch or [1, 100]

    from tasks.deploy import local as deploy
    from tasks.package import RegisteredChain

    with tempfile.TemporaryDirectory(prefix="popseg-load-") as scratch:
        project = None
        if options.endpoint:
            state = deploy.local_endpoint(options.endpoint)
            name, port, url = state.name, state.port, state.url
            from tasks.chain import SegmentationChain

            n_features = SegmentationChain.load(state.model_dir).n_features
        else:
            project = Path(scratch)
            chain_dir = project / "chain"
            chain = _synthetic_chain(chain_dir)
            n_features = chain.n_features
            registered = RegisteredChain("synthetic", "1", "none", chain_dir)
            result = deploy.deploy_local("load", registered, project=project, chain=chain)
            name, port, url = "load", result.details["port"], result.endpoint_url
        try:
            results = [
                run_load(
                    port,
                    name,
                    n_features,
                    options.requests,
                    options.concurrency,
                    batch,
                    options.max_seconds,
                )
                for batch in batches
            ]
            results.append(boto3_latency(url, name, n_features))
        finally:
            if project is not None:
                deploy.undeploy_local("load", project=project)
    for row in results:
        print(json.dumps(row))
    if options.output:
        Path(options.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
