"""Frequency recall: the SAE features that fire most often on a task's tokens.

A feature's firing rate is the fraction of counted task tokens on which its activation is
above 0. Counted tokens are the real tokens of each example (no padding, no leading BOS,
whose activations are outliers), either all of them (prompt and response) or the response
tokens only.

With a reference corpus, a feature's recall score is its task rate minus its reference
rate (the contrast), so features that fire everywhere (punctuation, "the") drop out.
Without one, the score is the task rate.

Candidates are the features with a positive score (they fire on the task, and more often
than on the reference when there is one), ranked by score (descending, ties by feature
id): the top ``num_candidates``, or, when ``min_rate`` is given, every feature whose score
is above ``min_rate``.
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
from sae import SAEConfig, SAEParams, encode
from train.tokenize import EncodedExample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallResult:
    """Firing statistics of every feature and the chosen candidates."""

    rates_f: np.ndarray  # [d_sae] float64 firing rate on the task tokens
    num_tokens: int  # task tokens counted
    scores_f: np.ndarray  # [d_sae] rate, or rate minus reference rate with a reference
    candidates: np.ndarray  # [C] int64 feature ids, best first
    reference_rates_f: np.ndarray | None = None  # [d_sae] firing rate on the reference
    reference_num_tokens: int | None = None


@functools.partial(jax.jit, static_argnames=("graphdef", "sae_cfg", "hook_name", "stop_at_layer"))
def _count_batch(
    graphdef,
    state,
    sae,
    tokens_bt,
    attention_mask_bt,
    count_mask_bt,
    positions_bt,
    *,
    sae_cfg,
    hook_name,
    stop_at_layer,
):
    _, captured = forward(
        graphdef,
        state,
        tokens_bt,
        attention_mask_bt,
        capture=(hook_name,),
        stop_at_layer=stop_at_layer,
        positions_bt=positions_bt,
    )
    acts_btf = encode(sae, sae_cfg, captured[hook_name])
    fired_btf = (acts_btf > 0) & count_mask_bt[..., None]
    return jnp.sum(fired_btf, axis=(0, 1), dtype=jnp.int32)


def firing_counts(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    examples: Sequence[EncodedExample],
    *,
    hook_name: str,
    tokens: str = "all",
    tokens_per_batch: int = 8192,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
    desc: str = "recall",
) -> tuple[np.ndarray, int]:
    """Return ``(counts_f, num_tokens)``: per feature, the counted tokens it fires on.

    ``tokens`` is "all" or "response" (see the module docstring). The model runs only up to
    the block that computes ``hook_name``.

    NOTE: each batch materializes all ``[B, T, d_sae]`` activations (4 bytes each), so
    lower ``tokens_per_batch`` for SAEs with many features.
    """
    stop = hook_stop_layer(hook_name, graphdef_config(graphdef, state).n_layers)
    batches = make_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    counts_f = np.zeros((sae_cfg.d_sae,), np.int64)
    num_tokens = 0
    for batch in progress(batches, desc):
        mask_bt = token_set_mask(batch, tokens)
        counts_f += np.asarray(
            _count_batch(
                graphdef,
                state,
                sae,
                batch.tokens_bt,
                batch.attention_mask_bt,
                mask_bt,
                batch.positions_bt,
                sae_cfg=sae_cfg,
                hook_name=hook_name,
                stop_at_layer=stop,
            ),
            np.int64,
        )
        num_tokens += int(mask_bt.sum())
    return counts_f, num_tokens


def rank_features(scores_f: np.ndarray, eligible_f: np.ndarray) -> np.ndarray:
    """Return eligible feature ids ordered by score descending, ties by id ascending."""
    ids = np.flatnonzero(eligible_f)
    order = np.lexsort((ids, -scores_f[ids]))
    return ids[order].astype(np.int64)


def select_candidates(
    scores_f: np.ndarray,
    *,
    num_candidates: int = 32,
    min_rate: float | None = None,
) -> np.ndarray:
    """Return candidate feature ids, best first (rule in the module docstring)."""
    ranked = rank_features(scores_f, scores_f > 0)
    if min_rate is not None:
        return ranked[scores_f[ranked] > min_rate]
    return ranked[:num_candidates]


def frequency_recall(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    task_examples: Sequence[EncodedExample],
    *,
    hook_name: str,
    reference_examples: Sequence[EncodedExample] | None = None,
    tokens: str = "all",
    num_candidates: int = 32,
    min_rate: float | None = None,
    tokens_per_batch: int = 8192,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
) -> RecallResult:
    """Measure firing rates on the task (and reference) tokens and pick the candidates."""
    pass_kwargs = dict(
        hook_name=hook_name,
        tokens=tokens,
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    counts_f, num_tokens = firing_counts(
        graphdef, state, sae, sae_cfg, task_examples, desc="recall (task)", **pass_kwargs
    )
    if num_tokens == 0:
        raise ValueError(
            f"no task tokens to count (tokens={tokens!r}); check that the task examples have "
            "non-empty responses"
        )
    rates_f = counts_f / num_tokens
    scores_f = rates_f.copy()

    ref_rates_f, ref_tokens = None, None
    if reference_examples is not None:
        ref_counts_f, ref_tokens = firing_counts(
            graphdef, state, sae, sae_cfg, reference_examples, desc="recall (ref)", **pass_kwargs
        )
        if ref_tokens == 0:
            raise ValueError("the reference corpus has no tokens to count")
        ref_rates_f = ref_counts_f / ref_tokens
        scores_f = rates_f - ref_rates_f

    candidates = select_candidates(scores_f, num_candidates=num_candidates, min_rate=min_rate)
    logger.info(
        "recall: %d of %d features fire on %d task tokens; %d candidates",
        int((counts_f > 0).sum()),
        sae_cfg.d_sae,
        num_tokens,
        len(candidates),
    )
    return RecallResult(rates_f, num_tokens, scores_f, candidates, ref_rates_f, ref_tokens)
