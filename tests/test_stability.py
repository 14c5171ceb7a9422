"""Feature-set stability: Jaccard and Spearman against scipy and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from igds_jax.stability import average_ranks, compare_feature_scores, jaccard, spearman


def test_jaccard_cases():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert jaccard([], []) == 1.0
    assert jaccard([1], [2]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=30).astype(float)  # many ties
    y = x + rng.integers(0, 3, size=30)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_array_equal(average_ranks(x), stats.rankdata(x))


def test_spearman_degenerate():
    assert np.isnan(spearman(np.array([1.0]), np.array([2.0])))
    assert np.isnan(spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))


def test_compare_feature_scores():
    a = np.array([0.9, 0.8, 0.0, 0.5, 0.1, 0.0])
    b = np.array([0.7, 0.0, 0.6, 0.5, 0.2, 0.0])
    out = compare_feature_scores(a, b, top_k=3)
    assert out["top_a"] == [0, 1, 3]
    assert out["top_b"] == [0, 2, 3]
    assert out["shared"] == [0, 3]
    assert out["jaccard"] == 0.5
    union = [0, 1, 2, 3]
    assert out["spearman_union"] == pytest.approx(stats.spearmanr(a[union], b[union]).statistic)
    either = [0, 1, 2, 3, 4]
    assert out["spearman_all"] == pytest.approx(stats.spearmanr(a[either], b[either]).statistic)
    assert out["num_all"] == 5
