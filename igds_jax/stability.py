"""Stability of the identified features across two source datasets of the same task.

Given one score per feature from each dataset (recall score, or causal delta), the
comparison reports:

- ``jaccard``: ``|A ∩ B| / |A ∪ B|`` of the two top-``k`` feature sets (each ranked by
  score descending, ties by feature id, features with a non-positive score left out);
- ``spearman_union``: Spearman rank correlation of the two scores over the features in
  ``A ∪ B``;
- ``spearman_all``: the same over every feature that scores above 0 in either dataset.

Spearman's rho here is the Pearson correlation of the ranks, with tied values given their
average rank. It is NaN when fewer than two features are compared or when one side is
constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from igds_jax.recall import rank_features


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """Return ``|a ∩ b| / |a ∪ b|`` of two id sets; 1.0 when both are empty."""
    set_a, set_b = set(int(i) for i in a), set(int(i) for i in b)
    union = set_a | set_b
    if not union:
        return 1.0
    return len(set_a & set_b) / len(union)


def average_ranks(values_n: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``values_n`` ascending, ties sharing their mean rank."""
    values = np.asarray(values_n, np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x_n: np.ndarray, y_n: np.ndarray) -> float:
    """Return Spearman's rho of two equal-length score vectors (see the module docstring)."""
    x, y = np.asarray(x_n, np.float64), np.asarray(y_n, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape}, {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def top_k_features(scores_f: np.ndarray, k: int) -> np.ndarray:
    """Return the ``k`` features with the highest positive score, best first."""
    scores = np.asarray(scores_f, np.float64)
    return rank_features(scores, scores > 0)[:k]


def compare_feature_scores(
    scores_a_f: np.ndarray, scores_b_f: np.ndarray, *, top_k: int = 32
) -> dict[str, Any]:
    """Compare two per-feature score vectors; returns a JSON-ready dict."""
    a, b = np.asarray(scores_a_f, np.float64), np.asarray(scores_b_f, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in length: {a.shape} vs {b.shape}")
    top_a, top_b = top_k_features(a, top_k), top_k_features(b, top_k)
    union = np.union1d(top_a, top_b).astype(np.int64)
    either = np.flatnonzero((a > 0) | (b > 0))
    return {
        "top_k": top_k,
        "top_a": top_a.tolist(),
        "top_b": top_b.tolist(),
        "shared": sorted(set(top_a.tolist()) & set(top_b.tolist())),
        "jaccard": jaccard(top_a, top_b),
        "spearman_union": spearman(a[union], b[union]),
        "num_union": int(len(union)),
        "spearman_all": spearman(a[either], b[either]),
        "num_all": int(len(either)),
    }
