"""Per-batch score functions in the scoring engine's ``score_fn(params, batch)`` form.

:func:`frs_score_fn` computes the Feature Resonance Score of each row: the model runs only
up to the SAE's hook (``stop_at_layer``), the SAE encodes only the chosen features
(``sae.encode_subset``), and the activations are summed over features, then aggregated over
the counted tokens (every real token except a leading BOS, or the response tokens only)
with ``sum``, ``mean`` or ``max``. A row with no counted token scores 0.

``params`` is ``{"model": state, "sae": SAEParams, "features": int32 [m]}``, so one compiled
function serves any feature set of the same size.
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

from igds_jax.scoring_engine import ScoreFn
from igds_jax.sharding import replicate
from models.hooks import parse_hook_name
from models.transformer import forward
from sae import SAEConfig, SAEParams, encode_subset

logger = logging.getLogger(__name__)

AGGREGATES = ("sum", "mean", "max")
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
    layer, _ = parse_hook_name(hook, n_layers)
    stop = 0 if layer is None else layer + 1

    def score(params: Mapping[str, Any], batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        _, captured = forward(
            graphdef,
            params["model"],
            batch["tokens_bt"],
            batch["attention_mask_bt"],
            capture=(hook,),
            stop_at_layer=stop,
        )
        acts_btm = encode_subset(params["sae"], sae_cfg, captured[hook], params["features"])
        per_token_bt = acts_btm.astype(jnp.float32).sum(-1)
        counted_bt = batch["token_mask_bt"].astype(bool)
        if tokens == "response":
            counted_bt &= batch["response_mask_bt"].astype(bool)
        if aggregate == "max":
            value_b = jnp.where(counted_bt, per_token_bt, -jnp.inf).max(-1)
            value_b = jnp.where(counted_bt.any(-1), value_b, 0.0)
        else:
            value_b = jnp.where(counted_bt, per_token_bt, 0.0).sum(-1)
            if aggregate == "mean":
                value_b = value_b / jnp.maximum(counted_bt.sum(-1), 1)
        return {"frs": value_b}

    return score


def frs_params(
    state: nnx.State, sae_params: SAEParams, feature_ids: Any, mesh: Mesh
) -> dict[str, Any]:
    """Assemble the ``params`` of :func:`frs_score_fn`, with the SAE replicated on ``mesh``.

    ``state`` must already be placed (``igds_jax.sharding.make_placer`` or ``shard_state``).
    """
    ids = np.asarray(feature_ids, dtype=np.int32).reshape(-1)
    if ids.size == 0:
        raise ValueError("feature_ids is empty; pass the validated feature ids to score with")
    d_sae = int(np.shape(sae_params.W_enc)[1])
    bad = ids[(ids < 0) | (ids >= d_sae)]
    if bad.size:
        raise ValueError(f"feature ids {bad.tolist()} are outside 0..{d_sae - 1} of the SAE")
    return {"model": state, "sae": replicate(sae_params, mesh), "features": replicate(ids, mesh)}
