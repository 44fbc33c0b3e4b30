"""The Dask engine: the pipeline's statistics and k-means on data that is never in one process.

`popseg train --engine dask` runs the same stages as the in-memory engine (flows/stages.py,
one wiring for both) and `popseg score --engine dask` the same scoring (flows/scoring.py);
this package is the provider of their statistics on a cluster:

* `engine` - `DaskEngine`, the `tasks.engine.Engine` of the Dask engine: each stage's
  statistics computed over the partitions, and the stage's own fitting (tasks/impute, scale,
  reduce, cluster, evaluate, validate) applied to them.
* `session` - the cluster: a LocalCluster sized to the machine or an existing scheduler (with
  a connect timeout), and `DaskSession.compute`, which turns a lost worker, an unreachable
  scheduler or an unreadable partition into a clear `PopsegError`.
* `table` - Parquet/CSV files (local or s3://) as a Dask DataFrame: column choice from the first
  partition (the in-memory `select_features`), rows per partition, a seeded sample that does not
  depend on the partitioning, and the data hash.
* `stats` - reductions over partitions, merged in partition order (results do not depend on the
  number of workers): column moments, exact quantiles (histogram refinement), the covariance,
  the most frequent value, id uniqueness (a hash shuffle), validation counts.
* `kmeans` - Lloyd's algorithm for every k at once, each partition running the numba kernels of
  `tasks.compute` (`lloyd_partial_sums`, `assign_partial`) and the sums reduced per iteration;
  then per-k statistics (inertia, Calinski-Harabasz, Davies-Bouldin, sizes, profiles, nearest
  members).
* `scoring` - batch scoring of a fitted chain: each partition scored on a worker by
  `tasks.score.score_rows` (as in memory) and written there as a Parquet part.

Per-partition functions are module-level (picklable for process workers) and take the fitted
parameters explicitly; nothing here imports Prefect or MLflow. Dask is imported lazily by the
modules that need it, so the in-memory engine never loads it.
"""
