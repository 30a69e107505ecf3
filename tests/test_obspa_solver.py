"""The blocked OBSPA solver gives the scores of the full-matrix greedy search it replaced."""

import numpy as np
import pytest
from obspa_reference import group_scores as reference_scores
from test_algorithms import convnet, images, rank_deficient, two_dense

from spa_keras.algorithms import obspa
from spa_keras.frontends.keras import from_keras
from spa_keras.graph import analyse


def scores_both_ways(kg, x, **options):
    o = obspa.OBSPA(kg, analyse(kg.graph), [x], **options)
    fallback = np.random.default_rng(0).random(o.analysis.n_classes)
    new = o.scores(fallback)
    current = obspa.group_scores
    obspa.group_scores = reference_scores
    try:
        old = o.scores(fallback)
    finally:
        obspa.group_scores = current
    return new, old


@pytest.mark.parametrize("max_dim", [2048, 64])  # patches (9 rows a class) and channel-covariance consumers
def test_blocked_solver_equals_the_full_matrix_search_on_a_convnet(max_dim):
    new, old = scores_both_ways(from_keras(convnet()), images(256), damp=1e-2, max_dim=max_dim, blocks=8)
    assert np.array_equal(np.isfinite(new), np.isfinite(old)) and np.isfinite(new).sum() > 40
    ok = np.isfinite(old)
    np.testing.assert_allclose(new[ok], old[ok], rtol=1e-7, atol=1e-12)


def test_blocked_solver_equals_the_full_matrix_search_on_dense_layers():
    new, old = scores_both_ways(from_keras(two_dense(24)), rank_deficient(width=24), damp=1e-4, blocks=32)
    ok = np.isfinite(old)
    assert ok.sum() >= 24
    np.testing.assert_allclose(new[ok], old[ok], rtol=1e-7, atol=1e-12)


def test_compensation_is_the_least_squares_refit_of_the_rows_that_stay():
    """The OBS update with ``inverse``: the kept rows re-fit the layer's outputs ``X W`` from the kept
    features alone (least squares), and the removed rows are zero."""
    from spa_keras.algorithms.obs_solver import compensate, inverse

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))  # correlated features
    w = rng.standard_normal((12, 5))
    rows = np.array([1, 4, 7])
    new = compensate(w.copy(), inverse(x.T @ x, 1e-12), rows)
    keep = np.setdiff1d(np.arange(12), rows)
    refit = np.linalg.lstsq(x[:, keep], x @ w, rcond=None)[0]
    np.testing.assert_allclose(new[keep], refit, rtol=1e-6, atol=1e-9)
    assert np.all(new[rows] == 0)


def test_inverse_damps_a_singular_hessian_until_it_factors():
    """A dead channel (a zero row and column) makes ``H`` singular: the damping grows from zero until the
    Cholesky factorisation succeeds, and the inverse is that of the damped matrix."""
    from spa_keras.algorithms.obs_solver import inverse

    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    x[:, 2] = 0.0
    h = x.T @ x
    inv = inverse(h, 0.0)
    assert np.isfinite(inv).all()
    np.testing.assert_array_equal(inv, inv.T)
    damped = h + 1e-12 * np.mean(np.diag(h)) * np.eye(6)  # the first damping that lets it factor
    np.testing.assert_allclose(inv @ damped, np.eye(6), atol=1e-6)
    np.testing.assert_allclose(inverse(h, 1e-2), np.linalg.inv(h + 1e-2 * np.mean(np.diag(h)) * np.eye(6)),
                               rtol=1e-10)
