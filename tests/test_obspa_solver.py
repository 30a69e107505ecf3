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
