"""Feature-Resonant Score (FRS): how strongly an example activates the validated features.

For example ``x`` with scored tokens ``t`` and validated features ``i``, let
``s_t = sum_i f_i(h_t)`` be the summed activation of the validated features at token
``t``. The FRS is

- ``sum`` (default, the IGDS definition): ``sum_t s_t``;
- ``mean``: ``sum_t s_t / (number of scored tokens)``, 0 for an example with none;
- ``max``: ``max_t s_t``, 0 for an example with none.

Scored tokens are the real tokens without a leading BOS (``tokens="all"``), or the
response tokens only (``tokens="response"``).

``frs_batch`` is the jitted per-batch kernel. It runs the model only up to the block that
computes the hook (``stop_at_layer``) and encodes only the validated features
(``sae.encode_subset``). A TopK SAE, whose features depend on each other, is encoded
whole and the columns taken. ``frs_scores`` loops the kernel over length buckets in
memory; with ``feature_stats=True`` it also returns, per example and validated feature,
the summed activation over the scored tokens, the peak activation and the peak token's
index (``FeatureStats``), which reports use to show what each feature fires on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from igds_jax.method_batches import hook_stop_layer, make_batches, progress, token_set_mask
from models.transformer import forward, graphdef_config
from sae import SAEConfig, SAEParams, encode, encode_subset
from train.tokenize import EncodedExample

logger = logging.getLogger(__name__)

AGGREGATES = ("sum", "mean", "max")


@dataclass(frozen=True)
class FeatureStats:
    """Activation summary per example ``n`` and validated feature ``m``, over the scored tokens."""

    feature_ids: np.ndarray  # [m] int64
    sums_nm: np.ndarray  # float64 summed activation
    peaks_nm: np.ndarray  # float64 largest activation (0 when it never fires)
    peak_pos_nm: np.ndarray  # int64 index of the peak token in the example's input_ids


def feature_activations(
    sae: SAEParams, sae_cfg: SAEConfig, h_btd: jax.Array, feature_ids_m: jax.Array
) -> jax.Array:
    """Return the activations ``[B, T, m]`` of the chosen features only."""
    if sae_cfg.architecture == "topk":
        return jnp.take(encode(sae, sae_cfg, h_btd), feature_ids_m, axis=-1)
    return encode_subset(sae, sae_cfg, h_btd, feature_ids_m)


def aggregate_tokens(per_token_bt: jax.Array, score_mask_bt: jax.Array, aggregate: str):
    """Reduce ``[B, T]`` per-token values over the masked tokens to ``[B]``."""
    masked_bt = jnp.where(score_mask_bt, per_token_bt, 0.0)
    if aggregate == "sum":
        return masked_bt.sum(axis=1)
    if aggregate == "mean":
        return masked_bt.sum(axis=1) / jnp.maximum(score_mask_bt.sum(axis=1), 1)
    if aggregate == "max":
        # activations are >= 0, so 0 is also the value of a row without scored tokens
        return jnp.max(masked_bt, axis=1, initial=0.0)
    raise ValueError(f"aggregate={aggregate!r}; expected one of {AGGREGATES}")


@functools.partial(
    jax.jit, static_argnames=("graphdef", "sae_cfg", "hook_name", "aggregate", "with_stats")
)
def frs_batch(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    tokens_bt: jax.Array,
    attention_mask_bt: jax.Array,
    score_mask_bt: jax.Array,
    feature_ids_m: jax.Array,
    positions_bt: jax.Array | None = None,
    *,
    sae_cfg: SAEConfig,
    hook_name: str,
    aggregate: str = "sum",
    with_stats: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Return the FRS ``[B]`` (float32) of one padded batch.

    With ``with_stats``, return ``(frs_b, sums_bm, peaks_bm, peak_col_bm)``: per feature,
    the summed and the peak activation over the scored tokens and the peak's column.

    Args:
      graphdef, state: the split model.
      sae: SAE parameters; ``sae_cfg`` is their static config.
      tokens_bt, attention_mask_bt: the batch; padding has mask 0.
      score_mask_bt: tokens that count (False on padding, on a leading BOS and, for
        response-only scores, on prompt tokens).
      feature_ids_m: int32 ids of the validated features (dynamic: a new set of the same
        size reuses the compiled code).
      positions_bt: token positions; None derives them from ``attention_mask_bt``.
      hook_name: hook point the SAE reads.
      aggregate: "sum", "mean" or "max" over tokens (see the module docstring).
    """
    cfg = graphdef_config(graphdef, state)
    _, captured = forward(
        graphdef,
        state,
        tokens_bt,
        attention_mask_bt,
        capture=(hook_name,),
        stop_at_layer=hook_stop_layer(hook_name, cfg.n_layers),
        positions_bt=positions_bt,
    )
    acts_btm = feature_activations(sae, sae_cfg, captured[hook_name], feature_ids_m)
    per_token_bt = acts_btm.astype(jnp.float32).sum(axis=-1)
    score_mask_bt = score_mask_bt.astype(bool)
    frs_b = aggregate_tokens(per_token_bt, score_mask_bt, aggregate)
    if not with_stats:
        return frs_b
    masked_btm = jnp.where(score_mask_bt[..., None], acts_btm.astype(jnp.float32), 0.0)
    return frs_b, masked_btm.sum(axis=1), masked_btm.max(axis=1), jnp.argmax(masked_btm, axis=1)


def frs_scores(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    examples: Sequence[EncodedExample],
    feature_ids: Sequence[int],
    *,
    hook_name: str,
    aggregate: str = "sum",
    tokens: str = "all",
    tokens_per_batch: int = 8192,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
    feature_stats: bool = False,
) -> np.ndarray | tuple[np.ndarray, FeatureStats]:
    """Return the FRS ``[n]`` (float64) of every example, in the order given, and with
    ``feature_stats`` also each feature's ``FeatureStats``.

    Raises ValueError when ``feature_ids`` is empty (every score would be 0).
    """
    ids_m = np.asarray(feature_ids, np.int32)
    if ids_m.size == 0:
        raise ValueError(
            "FRS needs at least one validated feature; none passed causal validation. Lower "
            "causal.min_delta, raise recall.num_candidates, or set causal.enabled=false"
        )
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}; expected one of {AGGREGATES}")
    if ids_m.min() < 0 or ids_m.max() >= sae_cfg.d_sae:
        raise ValueError(f"feature ids must be in 0..{sae_cfg.d_sae - 1}, got {ids_m.tolist()}")
    batches = make_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    n, m = len(examples), len(ids_m)
    scores = np.zeros(n, np.float64)
    stats = None
    if feature_stats:
        stats = FeatureStats(
            ids_m.astype(np.int64),
            np.zeros((n, m), np.float64),
            np.zeros((n, m), np.float64),
            np.zeros((n, m), np.int64),
        )
    for batch in progress(batches, "FRS"):
        out = frs_batch(
            graphdef,
            state,
            sae,
            batch.tokens_bt,
            batch.attention_mask_bt,
            token_set_mask(batch, tokens),
            ids_m,
            batch.positions_bt,
            sae_cfg=sae_cfg,
            hook_name=hook_name,
            aggregate=aggregate,
            with_stats=feature_stats,
        )
        real = batch.example_idx_b >= 0
        rows = batch.example_idx_b[real]
        if stats is None:
            scores[rows] = np.asarray(out, np.float64)[real]
            continue
        batch_scores, sums, peaks, cols = (np.asarray(a) for a in out)
        scores[rows] = batch_scores[real].astype(np.float64)
        stats.sums_nm[rows] = sums[real]
        stats.peaks_nm[rows] = peaks[real]
        # Map the padded-batch column to the index in the example (positions skip left padding).
        stats.peak_pos_nm[rows] = np.take_along_axis(batch.positions_bt[real], cols[real], axis=1)
    return scores if stats is None else (scores, stats)
