"""Feature interventions with the model hook signature ``fn(activation_btd, token_mask_bt[, p])``.

Edits (``f_i`` is feature ``i``'s activation on the token, ``s`` the SAE's input scale
from ``sae.core.input_scale``, 1 unless the SAE normalizes its input):

- amplify by ``alpha``: ``h + (alpha - 1) * f_i(h) * W_dec[i] / s``
- clamp to ``v``:        ``h + (v - f_i(h)) * W_dec[i] / s``
- steer by ``c``:        ``h + c * W_dec[i]`` (a fixed direction in raw activation space)

Only the feature's own contribution to the reconstruction changes; the SAE's
reconstruction error stays in ``h``, so ``alpha = 1`` returns ``h`` unchanged. Positions
where ``token_mask_bt`` is 0 are never edited.

Two forms exist. ``amplify_feature``/``clamp_feature``/``steer_feature`` close over one
feature and return a two-argument function (a new function, so a new compilation, per
feature). ``make_feature_intervention(cfg, mode)`` returns one three-argument function
whose dynamic ``FeatureEdit`` carries per-batch-row feature ids and values, so a single
compiled forward pass can test a different candidate feature in every batch row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sae.config import SAEConfig
from sae.core import activate, check_feature_ids, encode, forward, input_scale, sae_input
from sae.params import SAEParams

MODES = ("amplify", "clamp", "steer")

Intervention = Callable[..., jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FeatureEdit:
    """Dynamic intervention parameters: batch row ``b`` edits ``feature_ids_b[b]``.

    ``values_b`` contains alpha (amplify), the clamp value v (clamp) or the coefficient c
    (steer). Both vectors have length ``batch`` or 1 (then every row uses the same
    feature). ``sae`` is the full SAE; the edit gathers its rows inside the jitted call.
    """

    sae: SAEParams
    feature_ids_b: jax.Array  # int32 [B] or [1]
    values_b: jax.Array  # float32 [B] or [1]


def feature_edit(sae: SAEParams, feature_ids: object, values: object) -> FeatureEdit:
    """Build a ``FeatureEdit`` from ids and values (scalars or per-row sequences)."""
    check_feature_ids(feature_ids, sae.W_enc.shape[1])
    ids = jnp.atleast_1d(jnp.asarray(feature_ids, jnp.int32))
    vals = jnp.atleast_1d(jnp.asarray(values, jnp.float32))
    if ids.ndim != 1 or vals.ndim != 1:
        raise ValueError(
            f"feature ids and values must be scalars or 1-D, got shapes {ids.shape} and "
            f"{vals.shape}"
        )
    if ids.shape[0] != vals.shape[0] and 1 not in (ids.shape[0], vals.shape[0]):
        raise ValueError(
            f"got {ids.shape[0]} feature ids but {vals.shape[0]} values; pass one value per "
            "id or a single value for all"
        )
    n = max(ids.shape[0], vals.shape[0])
    return FeatureEdit(sae, jnp.broadcast_to(ids, (n,)), jnp.broadcast_to(vals, (n,)))


def _rows(x_r: jax.Array, batch: int) -> jax.Array:
    if x_r.shape[0] not in (1, batch):
        raise ValueError(
            f"FeatureEdit has {x_r.shape[0]} rows but the activation batch has {batch}; "
            "give one feature id per batch row, or one for all rows"
        )
    return jnp.broadcast_to(x_r, (batch,) + x_r.shape[1:])


def _feature_acts_bt(
    sae: SAEParams, cfg: SAEConfig, h_btd: jax.Array, ids_b: jax.Array
) -> jax.Array:
    """Activation of feature ``ids_b[b]`` at every token of batch row ``b``."""
    if cfg.architecture == "topk":
        # TopK features depend on each other: encode all of them, then pick the column.
        f_btf = encode(sae, cfg, h_btd)
        return jnp.take_along_axis(f_btf, ids_b[:, None, None], axis=-1)[..., 0]
    w_enc_bd = jnp.take(sae.W_enc, ids_b, axis=1).T
    pre_bt = jnp.einsum("btd,bd->bt", sae_input(sae, cfg, h_btd), w_enc_bd)
    pre_bt = pre_bt + sae.b_enc[ids_b][:, None]
    return activate(cfg, pre_bt, sae.threshold[ids_b][:, None])


def make_feature_intervention(cfg: SAEConfig, mode: str) -> Intervention:
    """Return ``fn(h_btd, token_mask_bt, edit: FeatureEdit) -> h_btd`` for ``mode``.

    ``mode`` is one of "amplify", "clamp", "steer" (see the module docstring). Reuse the
    returned function object across calls so that jit reuses its compilation.
    """
    if mode not in MODES:
        raise ValueError(f"unknown intervention mode {mode!r}; expected one of {MODES}")

    def intervene(h_btd: jax.Array, token_mask_bt: jax.Array, edit: FeatureEdit) -> jax.Array:
        batch = h_btd.shape[0]
        ids_b = _rows(edit.feature_ids_b, batch)
        values_b1 = _rows(edit.values_b, batch)[:, None].astype(jnp.float32)
        w_dec_bd = edit.sae.W_dec[ids_b].astype(jnp.float32)

        # coefficient of W_dec[i] at every token
        if mode == "steer":
            coef_bt1 = jnp.broadcast_to(values_b1, h_btd.shape[:2])[..., None]
        else:
            f_bt = _feature_acts_bt(edit.sae, cfg, h_btd, ids_b).astype(jnp.float32)
            target_bt = (values_b1 - 1.0) * f_bt if mode == "amplify" else values_b1 - f_bt
            coef_bt1 = target_bt[..., None] / input_scale(cfg, h_btd)

        edited = h_btd.astype(jnp.float32) + coef_bt1 * w_dec_bd[:, None, :]
        keep_bt1 = token_mask_bt[..., None].astype(bool)
        return jnp.where(keep_bt1, edited.astype(h_btd.dtype), h_btd)

    intervene.__name__ = f"sae_{mode}_feature"
    return intervene


def _single_feature_sae(sae: SAEParams, cfg: SAEConfig, feature_id: int) -> tuple[SAEParams, int]:
    """Slice one feature out of the SAE so a closure keeps O(d_in) constants, not the SAE.

    TopK features depend on all others, so a TopK SAE is kept whole.
    """
    d_sae = sae.W_enc.shape[1]
    if not 0 <= feature_id < d_sae:
        raise ValueError(f"feature id {feature_id} is out of range 0..{d_sae - 1}")
    if cfg.architecture == "topk":
        return sae, feature_id
    i = np.array([feature_id])
    sliced = SAEParams(
        W_enc=sae.W_enc[:, i],
        b_enc=sae.b_enc[i],
        W_dec=sae.W_dec[i],
        b_dec=sae.b_dec,
        threshold=sae.threshold[i],
    )
    return sliced, 0


def _single(sae: SAEParams, cfg: SAEConfig, feature_id: int, value: float, mode: str):
    sub, local_id = _single_feature_sae(sae, cfg, int(feature_id))
    edit = feature_edit(sub, local_id, value)
    batched = make_feature_intervention(cfg, mode)

    def intervene(h_btd: jax.Array, token_mask_bt: jax.Array) -> jax.Array:
        return batched(h_btd, token_mask_bt, edit)

    intervene.__name__ = f"sae_{mode}_feature_{feature_id}"
    return intervene


def amplify_feature(sae: SAEParams, cfg: SAEConfig, feature_id: int, alpha: float) -> Intervention:
    """``fn(h, mask)`` adding ``(alpha - 1) * f_i(h) * W_dec[i] / s`` on real tokens."""
    return _single(sae, cfg, feature_id, alpha, "amplify")


def clamp_feature(sae: SAEParams, cfg: SAEConfig, feature_id: int, value: float) -> Intervention:
    """``fn(h, mask)`` setting feature ``i``'s contribution to ``value * W_dec[i] / s``."""
    return _single(sae, cfg, feature_id, value, "clamp")


def steer_feature(sae: SAEParams, cfg: SAEConfig, feature_id: int, coef: float) -> Intervention:
    """``fn(h, mask)`` adding ``coef * W_dec[i]`` on real tokens."""
    return _single(sae, cfg, feature_id, coef, "steer")


def make_splice_intervention(cfg: SAEConfig) -> Intervention:
    """Return ``fn(h_btd, token_mask_bt, sae: SAEParams)`` that replaces ``h`` by the SAE
    reconstruction on real tokens (for the loss-with-SAE-spliced-in metric).

    The SAE is a dynamic argument, so a large SAE is not baked into the compiled code.
    """

    def splice(h_btd: jax.Array, token_mask_bt: jax.Array, sae: SAEParams) -> jax.Array:
        recon = forward(sae, cfg, h_btd)
        return jnp.where(token_mask_bt[..., None].astype(bool), recon, h_btd)

    splice.__name__ = "sae_splice"
    return splice


def sae_splice_intervention(sae: SAEParams, cfg: SAEConfig) -> Intervention:
    """``fn(h, mask)`` replacing ``h`` by the SAE reconstruction on real tokens.

    NOTE: the closure keeps the whole SAE, which jit embeds in the compiled code. For a
    large SAE prefer ``make_splice_intervention(cfg)`` with the SAE as dynamic parameter.
    """
    splice = make_splice_intervention(cfg)

    def intervene(h_btd: jax.Array, token_mask_bt: jax.Array) -> jax.Array:
        return splice(h_btd, token_mask_bt, sae)

    intervene.__name__ = "sae_splice"
    return intervene
