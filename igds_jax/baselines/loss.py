"""Loss baseline: score each example by its mean response-token loss under the base model.

Higher loss is kept (the examples the model finds hardest). The per-token losses come from
the model code; this module contains only the formula.

Loss alignment convention used here and in ``ifd.py``: ``token_loss_bt[b, t]`` is the
cross-entropy of token ``t`` given tokens ``< t`` (so position 0 carries no loss), and the
mask marks the target tokens that count, e.g. ``response_mask_bt`` from
``train.tokenize``.
"""

from __future__ import annotations

import numpy as np


def mean_masked_loss(token_loss_bt: np.ndarray, mask_bt: np.ndarray) -> np.ndarray:
    """Return the ``[B]`` mean of ``token_loss_bt`` over the positions where ``mask_bt`` is set.

    Raises ValueError for a row with no masked token (its mean is undefined) or a
    non-finite loss inside the mask.
    """
    loss = np.asarray(token_loss_bt, dtype=np.float64)
    mask = np.asarray(mask_bt, dtype=bool)
    if loss.shape != mask.shape or loss.ndim != 2:
        raise ValueError(
            f"token_loss_bt {loss.shape} and mask_bt {mask.shape} must be equal 2-D shapes"
        )
    counts = mask.sum(axis=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"rows {empty[:10].tolist()} have no masked tokens to average")
    bad = ~np.isfinite(loss) & mask
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))[:10].tolist()
        raise ValueError(f"non-finite loss inside the mask in rows {rows}")
    return np.where(mask, loss, 0.0).sum(axis=1) / counts


def loss_scores(mean_loss_n: np.ndarray) -> np.ndarray:
    """Return Loss baseline scores: the mean response loss itself (highest kept)."""
    scores = np.asarray(mean_loss_n, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("mean losses must be finite; check the model's per-token losses")
    return scores.copy()
