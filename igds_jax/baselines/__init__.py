"""Baseline data-selection methods: Random, Loss, IFD and ZIP.

Each returns one score per example (higher is kept, ``-inf`` is ineligible) for
``igds_jax.selection.select_top``.
"""

from igds_jax.baselines.ifd import ifd_scores, ifd_values
from igds_jax.baselines.loss import loss_scores, mean_masked_loss
from igds_jax.baselines.random import random_score, random_scores
from igds_jax.baselines.zip import ZipResult, compression_ratio, zip_scores, zip_select

__all__ = [
    "ZipResult",
    "compression_ratio",
    "ifd_scores",
    "ifd_values",
    "loss_scores",
    "mean_masked_loss",
    "random_score",
    "random_scores",
    "zip_scores",
    "zip_select",
]
