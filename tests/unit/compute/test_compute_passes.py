"""The public Lloyd passes (a plain pass, passes with Hamerly's bounds) against a
brute-force numpy reference, and the kernel threads' split of the work."""

import numba
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from tasks.compute import BoundedLloyd, lloyd_pass
from tasks.compute._threads import run_parts


def _reference(X, w, blocks):
    """Per-centroid weighted sums and weights of the rows nearest to it within each block,
    and each row's label per block (brute force)."""
    sums, weights, labels = [], [], []
    for C in blocks:
        d2 = ((X[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(axis=2)
        lab = d2.argmin(axis=1)
        onehot = np.eye(len(C))[lab] * w[:, None]
        sums.append(onehot.T @ X.astype(np.float64))
        weights.append(onehot.sum(axis=0))
        labels.append(lab)
    return np.concatenate(sums), np.concatenate(weights), np.array(labels)


@pytest.fixture(scope="module")
def data():
    X, _ = make_blobs(n_samples=3000, n_features=4, centers=5, cluster_std=2.0, random_state=1)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 2.0, size=len(X))
    blocks = [X[rng.choice(len(X), k, replace=False)] for k in (3, 6)]
    return X, w, blocks


def _offsets(blocks):
    return np.array([0, *np.cumsum([len(b) for b in blocks])], dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lloyd_pass_sums_match_brute_force(data, dtype):
    X, w, blocks = data
    X, w, blocks = X.astype(dtype), w.astype(dtype), [b.astype(dtype) for b in blocks]
    S, W = lloyd_pass(X, w, np.concatenate(blocks), _offsets(blocks))
    S_ref, W_ref, _ = _reference(X, w, blocks)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(W, W_ref, rtol=rtol)
    np.testing.assert_allclose(S, S_ref, rtol=rtol, atol=rtol * np.abs(S_ref).max())


def test_lloyd_pass_same_sums_on_one_thread(data):
    # the chunking depends on the number of rows only, so the sums are added in the same
    # order whatever the number of threads
    X, w, blocks = data
    C, offsets = np.concatenate(blocks), _offsets(blocks)
    X_big = np.repeat(X, 400, axis=0)  # enough work for the kernel threads to be used
    w_big = np.repeat(w, 400)
    many = lloyd_pass(X_big, w_big, C, offsets)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = lloyd_pass(X_big, w_big, C, offsets)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(many[0], one[0])
    np.testing.assert_array_equal(many[1], one[1])


def test_bounded_passes_give_plain_lloyd_sums(data):
    X, w, blocks = data
    lloyd = BoundedLloyd(X, w, None, [len(b) for b in blocks])
    active = np.arange(len(blocks), dtype=np.int64)
    lloyd.run_pass(blocks, active)  # first pass: every distance, complete sums
    S_ref, W_ref, labels_ref = _reference(X, w, blocks)
    np.testing.assert_allclose(lloyd.S, S_ref, rtol=1e-10)
    np.testing.assert_allclose(lloyd.W, W_ref, rtol=1e-10)
    np.testing.assert_array_equal(lloyd.labels, labels_ref)
    before = lloyd.copy()
    # move the centroids to their means; the bounded pass (no dense clustering) only
    # recomputes the rows the bounds cannot settle and adds the changes to the sums
    moved_all = lloyd.S / lloyd.W[:, None]
    lloyd.shift[:] = np.sqrt(((moved_all - np.concatenate(blocks)) ** 2).sum(axis=1))
    moved = np.split(moved_all, _offsets(blocks)[1:-1])
    lloyd.run_pass(moved, active, dense=[])
    S_ref, W_ref, labels_ref = _reference(X, w, moved)
    np.testing.assert_allclose(lloyd.S, S_ref, rtol=1e-9, atol=1e-9 * np.abs(S_ref).max())
    np.testing.assert_allclose(lloyd.W, W_ref, rtol=1e-9)
    np.testing.assert_array_equal(lloyd.labels, labels_ref)
    assert (lloyd.unsure_share < 1.0).all()  # the bounds settled some rows
    # the copy taken before was not touched by the second pass
    np.testing.assert_array_equal(before.labels, _reference(X, w, blocks)[2])
    assert (before.shift == 0).all()


def test_run_parts_runs_every_part_once_and_raises_a_parts_error():
    seen = np.zeros(4, dtype=np.int64)

    def kernel(part, n_parts, out):
        out[part] += n_parts

    run_parts(kernel, 4, seen)
    assert seen.tolist() == [4, 4, 4, 4]

    def failing(part, n_parts):
        if part == 2:
            raise ValueError("part 2 failed")

    with pytest.raises(ValueError, match="part 2 failed"):
        run_parts(failing, 3)


def test_kernel_threads_work_in_a_forked_child():
    # the child inherits the parent's pool object but none of its threads
    import multiprocessing

    X = np.random.default_rng(0).normal(size=(200_000, 4))
    C = X[:3].copy()
    offsets = np.array([0, 3], dtype=np.int64)
    expected = lloyd_pass(X, np.ones(len(X)), C, offsets)[1]  # the parent's pool is up
    with multiprocessing.get_context("fork").Pool(1) as pool:
        weights = pool.apply_async(_child_weights, (X, C, offsets)).get(timeout=120)
    np.testing.assert_array_equal(weights, expected)


def _child_weights(X, C, offsets):
    return lloyd_pass(X, np.ones(len(X)), C, offsets)[1]
