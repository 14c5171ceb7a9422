"""Pure SAE functions: ``encode``, ``decode``, ``forward`` and ``encode_subset``.

All functions take ``(params, cfg, ...)`` with ``cfg`` static and accept any leading shape
``[..., d_in]``. Encoding follows SAELens:

1. scale the input: ``x * s`` with ``s = 1`` for ``normalize_activations="none"``,
   ``s = norm_scaling_factor`` for ``"expected_average_only_in"`` and
   ``s = sqrt(d_in) / ||x||`` per token for ``"constant_norm_rescale"``;
2. subtract ``b_dec`` when ``apply_b_dec_to_input``;
3. ``pre = sae_in @ W_enc + b_enc`` and the architecture's activation:
   - ``relu``: ``relu(pre)``;
   - ``jumprelu``: ``relu(pre) * (pre > threshold)``;
   - ``topk``: keep the ``k`` largest ``pre`` of each token, then ReLU them;
   - ``batchtopk``: at inference the learned global threshold, exactly as ``jumprelu``.
     SAELens saves trained BatchTopK SAEs as JumpReLU SAEs for the same reason. The
     batch-wide top ``k * n`` selection is used only in training (``sae.train_step``).

Decoding is ``(f @ W_dec + b_dec) / s``, so a forward pass maps raw activations to raw
activations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sae.config import SAEConfig
from sae.params import SAEParams


def input_scale(cfg: SAEConfig, x_nd: jax.Array) -> jax.Array:
    """Per-token input multiplier ``s`` of shape ``[..., 1]`` (float32).

    For ``constant_norm_rescale`` a token whose activation is all zeros (padding) gets
    ``s = 1`` instead of infinity, so masked positions never produce NaN.
    """
    ones = jnp.ones(x_nd.shape[:-1] + (1,), jnp.float32)
    if cfg.normalize_activations == "expected_average_only_in":
        factor = 1.0 if cfg.norm_scaling_factor is None else cfg.norm_scaling_factor
        return ones * factor
    if cfg.normalize_activations == "constant_norm_rescale":
        norm = jnp.linalg.norm(x_nd.astype(jnp.float32), axis=-1, keepdims=True)
        safe = jnp.where(norm > 0, norm, 1.0)
        return jnp.where(norm > 0, math.sqrt(cfg.d_in) / safe, 1.0)
    return ones


def sae_input(params: SAEParams, cfg: SAEConfig, x_nd: jax.Array) -> jax.Array:
    x = (x_nd.astype(jnp.float32) * input_scale(cfg, x_nd)).astype(params.W_enc.dtype)
    if cfg.apply_b_dec_to_input:
        x = x - params.b_dec
    return x


def pre_activations(params: SAEParams, cfg: SAEConfig, x_nd: jax.Array) -> jax.Array:
    """Encoder pre-activations ``pre [..., d_sae]`` before the sparsifying nonlinearity."""
    return sae_input(params, cfg, x_nd) @ params.W_enc + params.b_enc


def topk_activation(pre_nf: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest entries of each row of ``pre``, ReLU them, zero the rest."""
    values, indices = jax.lax.top_k(pre_nf, k)
    out = jnp.zeros_like(pre_nf)
    return jnp.put_along_axis(out, indices, jax.nn.relu(values), axis=-1, inplace=False)


def activate(cfg: SAEConfig, pre_nf: jax.Array, threshold_f: jax.Array) -> jax.Array:
    """Apply the inference nonlinearity of ``cfg.architecture`` to pre-activations."""
    if cfg.architecture == "relu":
        return jax.nn.relu(pre_nf)
    if cfg.architecture in ("jumprelu", "batchtopk"):
        return jax.nn.relu(pre_nf) * (pre_nf > threshold_f)
    return topk_activation(pre_nf, int(cfg.k))


def encode(params: SAEParams, cfg: SAEConfig, x_nd: jax.Array) -> jax.Array:
    """Feature activations ``[..., d_sae]`` of raw activations ``x [..., d_in]``."""
    return activate(cfg, pre_activations(params, cfg, x_nd), params.threshold)


def decode(
    params: SAEParams,
    cfg: SAEConfig,
    f_nf: jax.Array,
    *,
    scale_n1: jax.Array | None = None,
) -> jax.Array:
    """Reconstruct raw activations ``[..., d_in]`` from feature activations.

    ``scale_n1`` is ``input_scale(cfg, x)`` of the encoded input. It is required for
    ``constant_norm_rescale``, whose scale depends on each token's norm, and ignored
    otherwise (the scale is then a constant from ``cfg``).
    """
    y = f_nf.astype(params.W_dec.dtype) @ params.W_dec + params.b_dec
    if cfg.normalize_activations == "none":
        return y
    if cfg.normalize_activations == "constant_norm_rescale":
        if scale_n1 is None:
            raise ValueError(
                "decode needs scale_n1=input_scale(cfg, x) for an SAE with "
                "normalize_activations='constant_norm_rescale'; or call forward(params, cfg, x)"
            )
        return (y.astype(jnp.float32) / scale_n1).astype(y.dtype)
    factor = 1.0 if cfg.norm_scaling_factor is None else cfg.norm_scaling_factor
    return (y.astype(jnp.float32) / factor).astype(y.dtype)


def forward(params: SAEParams, cfg: SAEConfig, x_nd: jax.Array) -> jax.Array:
    """SAE reconstruction of ``x [..., d_in]``, in the dtype of ``x``."""
    scale = input_scale(cfg, x_nd)
    f = encode(params, cfg, x_nd)
    return decode(params, cfg, f, scale_n1=scale).astype(x_nd.dtype)


def check_subset_supported(cfg: SAEConfig) -> None:
    """Raise ValueError for architectures whose features depend on each other (TopK)."""
    if cfg.architecture == "topk":
        raise ValueError(
            "encode_subset is exact only when each feature depends on its own "
            "pre-activation alone (relu, jumprelu, batchtopk at inference); a 'topk' SAE "
            "picks features by comparing all of them, so use encode() and index its columns"
        )


def check_feature_ids(feature_ids: object, d_sae: int) -> None:
    """Raise ValueError for feature ids outside ``0..d_sae-1``.

    Ids that are traced inside jit cannot be checked here; JAX clamps or fills an
    out-of-range gather there instead of failing.
    """
    try:
        ids = np.asarray(feature_ids)
    except jax.errors.TracerArrayConversionError:
        return
    bad = ids[(ids < 0) | (ids >= d_sae)]
    if bad.size:
        raise ValueError(f"feature ids {bad.tolist()} are out of range 0..{d_sae - 1}")


def encode_subset(
    params: SAEParams, cfg: SAEConfig, x_nd: jax.Array, feature_ids_m: jax.Array
) -> jax.Array:
    """Activations ``[..., m]`` of the features ``feature_ids`` only.

    Gathers the ``m`` encoder columns first, so the cost is O(m * d_in) per token instead
    of O(d_sae * d_in). Equal to ``encode(...)[..., feature_ids]`` for relu, jumprelu and
    batchtopk (whose inference rule is a per-feature threshold); raises ValueError for
    topk.
    """
    check_subset_supported(cfg)
    check_feature_ids(feature_ids_m, cfg.d_sae)
    ids = jnp.asarray(feature_ids_m, jnp.int32)
    w_enc_dm = jnp.take(params.W_enc, ids, axis=1)
    pre = sae_input(params, cfg, x_nd) @ w_enc_dm + params.b_enc[ids]
    return activate(cfg, pre, params.threshold[ids])
