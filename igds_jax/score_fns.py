"""Per-batch score functions in the scoring engine's ``score_fn(params, batch)`` form.

:func:`frs_score_fn` wraps ``igds_jax.frs.frs_batch`` (the Feature-Resonant Score of each
row: the model runs only up to the SAE's hook, the SAE encodes only the chosen features,
and the summed activations are aggregated over the counted tokens). Counted tokens are
every real token except a leading BOS (``tokens="all"``) or the response tokens only.

``params`` is ``{"model": state, "sae": SAEParams, "features": int32 [m]}``, so one compiled
function serves any feature set of the same size.

:func:`loss_score_fn` gives the Loss baseline's number: the mean cross-entropy of each row's
response tokens under the model (``igds_jax.model_baselines.token_loss_batch``), NaN for a
row without response tokens. Its ``params`` is ``{"model": state}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from igds_jax.frs import AGGREGATES, frs_batch
from igds_jax.model_baselines import token_loss_batch
from igds_jax.scoring_engine import ScoreFn
from models.hooks import parse_hook_name
from models.sharding import replicate
from sae import SAEConfig, SAEParams

logger = logging.getLogger(__name__)

TOKEN_SETS = ("all", "response")


def frs_score_fn(
    graphdef: nnx.GraphDef,
    sae_cfg: SAEConfig,
    n_layers: int,
    *,
    hook_name: str | None = None,
    aggregate: str = "sum",
    tokens: str = "all",
) -> ScoreFn:
    """Return ``score_fn(params, batch) -> {"frs": [B]}`` for the scoring engine.

    ``hook_name`` defaults to ``sae_cfg.hook_name``. Raises ValueError for an unknown
    aggregate or token set, or a hook the model does not have.
    """
    hook = hook_name or sae_cfg.hook_name
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}; expected one of {AGGREGATES}")
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens={tokens!r}; expected one of {TOKEN_SETS}")
    parse_hook_name(hook, n_layers)

    def score(params: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        score_mask_bt = batch["token_mask_bt"].astype(bool)
        if tokens == "response":
            score_mask_bt &= batch["response_mask_bt"].astype(bool)
        frs_b = frs_batch(
            graphdef,
            params["model"],
            params["sae"],
            batch["tokens_bt"],
            batch["attention_mask_bt"],
            score_mask_bt,
            params["features"],
            sae_cfg=sae_cfg,
            hook_name=hook,
            aggregate=aggregate,
        )
        return {"frs": frs_b}

    return score


def frs_params(
    state: nnx.State, sae_params: SAEParams, feature_ids: Any, mesh: Mesh
) -> dict[str, Any]:
    """Assemble the ``params`` of :func:`frs_score_fn`, with the SAE replicated on ``mesh``.

    ``state`` must already be placed (``models.sharding.make_placer`` or ``shard_state``).
    """
    ids = np.asarray(feature_ids, dtype=np.int32).reshape(-1)
    if ids.size == 0:
        raise ValueError("feature_ids is empty; pass the validated feature ids to score with")
    d_sae = int(np.shape(sae_params.W_enc)[1])
    bad = ids[(ids < 0) | (ids >= d_sae)]
    if bad.size:
        raise ValueError(f"feature ids {bad.tolist()} are outside 0..{d_sae - 1} of the SAE")
    return {"model": state, "sae": replicate(sae_params, mesh), "features": replicate(ids, mesh)}


def loss_score_fn(graphdef: nnx.GraphDef) -> ScoreFn:
    """Return ``score_fn(params, batch) -> {"loss": [B]}``: mean response-token loss."""

    def score(params: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        mask_bt = batch["attention_mask_bt"]
        positions_bt = jnp.maximum(jnp.cumsum(mask_bt, axis=1) - 1, 0)
        loss_bt = token_loss_batch(
            graphdef, params["model"], batch["tokens_bt"], mask_bt, positions_bt
        )
        counted_bt = batch["response_mask_bt"].astype(bool)
        count_b = counted_bt.sum(axis=1)
        total_b = jnp.where(counted_bt, loss_bt, 0.0).sum(axis=1)
        return {"loss": jnp.where(count_b > 0, total_b / jnp.maximum(count_b, 1), jnp.nan)}

    return score
