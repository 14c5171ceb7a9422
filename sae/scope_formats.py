"""Gemma Scope (``params.npz``) and Llama Scope (``hyperparams.json`` + safetensors) loaders.

Gemma Scope: JumpReLU SAEs with ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc``, ``b_dec`` and a per-feature ``threshold``; inputs are raw residual activations
and ``b_dec`` is not subtracted before encoding.

Llama Scope (the OpenMOSS lm-saes format): ``checkpoints/final.safetensors`` contains
``encoder.weight [d_sae, d]``, ``encoder.bias [d_sae]``, ``decoder.weight [d, d_sae]`` and
``decoder.bias [d]``; ``hyperparams.json`` gives ``d_model``, ``d_sae``, ``hook_point_in``,
``act_fn``, a scalar ``jump_relu_threshold``, ``norm_activation`` and
``dataset_average_activation_norm: {"in": n_in, "out": n_out}``. With
``norm_activation = "dataset-wise"`` the SAE was trained on ``x * s_in`` with
``s_in = sqrt(d_model) / n_in`` and reconstructs ``x * s_out``. The loader folds both
factors into the weights so that ``encode`` reads raw activations and returns the
original feature activations:

    W_enc = s_in * encoder.weight.T      b_enc = encoder.bias
    W_dec = decoder.weight.T / s_out     b_dec = decoder.bias / s_out

With ``sparsity_include_decoder_norm`` the JumpReLU gate is ``pre * ||W_D[i]|| > t``
(``W_D[i]`` the unscaled decoder vector of feature ``i``), which is the per-feature
threshold ``t / ||W_D[i]||`` on ``pre``.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import safetensors.numpy

from sae.config import SAEConfig
from sae.formats import read_json, require
from sae.params import SAEParams, params_from_arrays

logger = logging.getLogger(__name__)

_GEMMA_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _layer_from_path(path: Path) -> int | None:
    match = re.search(r"layer_(\d+)", str(path))
    return int(match.group(1)) if match else None


def load_gemma_scope(
    path: str | Path,
    *,
    layer: int | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    dtype: str | None = None,
) -> tuple[SAEParams, SAEConfig]:
    """Load a Gemma Scope ``params.npz`` (the file or its directory).

    The hook is ``hook_name`` if given, else ``blocks.{layer}.hook_resid_post`` with
    ``layer`` from the argument or from a ``layer_{L}`` component of the path.
    """
    path = Path(path)
    npz_path = path if path.suffix == ".npz" else path / "params.npz"
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path} not found")
    if hook_name is None:
        if layer is None:
            layer = _layer_from_path(npz_path)
        if layer is None:
            raise ValueError(
                f"{npz_path}: cannot tell the hook point; pass layer=L or hook_name=..., or "
                "keep the 'layer_{L}' folder name"
            )
        hook_name = f"blocks.{layer}.hook_resid_post"

    with np.load(npz_path) as data:
        # Some copies use lower-case "w_enc"/"w_dec".
        arrays = {("W_" + k[2:] if k.startswith("w_") else k): data[k] for k in data.files}
    unknown = sorted(set(arrays) - set(_GEMMA_KEYS))
    if unknown:
        raise ValueError(f"{npz_path}: unexpected arrays {unknown}; expected {list(_GEMMA_KEYS)}")
    for key in _GEMMA_KEYS:
        if key not in arrays:
            raise ValueError(f"{npz_path}: missing array {key!r}")
    if arrays["W_enc"].ndim != 2:
        shape = arrays["W_enc"].shape
        raise ValueError(f"{npz_path}: W_enc must be 2-D [d_in, d_sae], got {shape}")

    d_in, d_sae = arrays["W_enc"].shape
    cfg = SAEConfig(
        architecture="jumprelu",
        d_in=int(d_in),
        d_sae=int(d_sae),
        hook_name=hook_name,
        apply_b_dec_to_input=False,
        normalize_activations="none",
        dtype=dtype or "float32",
        model_name=model_name,
    )
    params = params_from_arrays(arrays, cfg, str(npz_path))
    logger.info(
        "loaded Gemma Scope SAE %s (d_in=%d, d_sae=%d, %s)", npz_path, d_in, d_sae, hook_name
    )
    return params, cfg


def _llama_norm_factors(hp: dict, d_model: int, source: Path) -> tuple[float, float, str]:
    """Return (s_in, s_out, normalize_activations) for a Llama Scope hyperparams dict."""
    mode = hp.get("norm_activation", "dataset-wise")
    if mode == "dataset-wise":
        norms = require(hp, "dataset_average_activation_norm", source)
        if not isinstance(norms, dict) or "in" not in norms or "out" not in norms:
            raise ValueError(
                f"{source}: field 'dataset_average_activation_norm' must be an object with "
                f"'in' and 'out', got {norms!r}"
            )
        n_in, n_out = float(norms["in"]), float(norms["out"])
        if not (n_in > 0 and n_out > 0):
            raise ValueError(
                f"{source}: field 'dataset_average_activation_norm' must be positive, got {norms!r}"
            )
        return math.sqrt(d_model) / n_in, math.sqrt(d_model) / n_out, "none"
    if mode == "token-wise":
        # x * sqrt(d) / ||x|| per token: SAELens' constant_norm_rescale.
        return 1.0, 1.0, "constant_norm_rescale"
    if mode in ("inference", "none"):
        return 1.0, 1.0, "none"
    raise ValueError(f"{source}: unsupported norm_activation {mode!r}")


def load_llama_scope(path: str | Path, *, dtype: str | None = None) -> tuple[SAEParams, SAEConfig]:
    """Load a Llama Scope SAE directory with its input normalization folded in."""
    path = Path(path)
    hp_path = path / "hyperparams.json"
    hp = read_json(hp_path)
    d_model = int(require(hp, "d_model", hp_path))
    d_sae = int(require(hp, "d_sae", hp_path))
    hook_in = str(require(hp, "hook_point_in", hp_path))
    hook_out = hp.get("hook_point_out", hook_in)
    if hook_out != hook_in:
        raise ValueError(
            f"{hp_path}: hook_point_out {hook_out!r} differs from hook_point_in {hook_in!r}; "
            "transcoders are not supported"
        )
    act_fn = str(hp.get("act_fn", "jumprelu"))
    if act_fn not in ("jumprelu", "relu", "topk"):
        raise ValueError(f"{hp_path}: field 'act_fn': unsupported value {act_fn!r}")
    include_dec_norm = bool(hp.get("sparsity_include_decoder_norm", False))
    if act_fn == "topk" and include_dec_norm:
        raise ValueError(
            f"{hp_path}: act_fn 'topk' with sparsity_include_decoder_norm is not supported"
        )
    s_in, s_out, normalization = _llama_norm_factors(hp, d_model, hp_path)

    weights_path = path / "checkpoints" / "final.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found")
    raw = {k: v.astype(np.float32) for k, v in safetensors.numpy.load_file(weights_path).items()}
    known = {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    known.add("log_jumprelu_threshold")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{weights_path}: unexpected tensors {unknown}")
    for key in ("encoder.weight", "encoder.bias", "decoder.weight"):
        if key not in raw:
            raise ValueError(f"{weights_path}: missing tensor {key!r}")
    enc, dec = raw["encoder.weight"], raw["decoder.weight"]
    if enc.shape != (d_sae, d_model) or dec.shape != (d_model, d_sae):
        raise ValueError(
            f"{weights_path}: encoder.weight {enc.shape} / decoder.weight {dec.shape} do not "
            f"match d_sae={d_sae}, d_model={d_model} (expected [d_sae, d] and [d, d_sae])"
        )
    b_dec_raw = raw.get("decoder.bias", np.zeros((d_model,), np.float32))

    threshold = None
    if act_fn == "jumprelu":
        if "log_jumprelu_threshold" in raw:
            threshold = np.exp(raw["log_jumprelu_threshold"])
        else:
            threshold = np.full((d_sae,), float(require(hp, "jump_relu_threshold", hp_path)))
        if include_dec_norm:
            dec_norm = np.linalg.norm(dec, axis=0)
            big = np.finfo(np.float32).max  # a zero decoder vector never fires
            threshold = np.where(dec_norm > 0, threshold / np.maximum(dec_norm, 1e-30), big)

    apply_b_dec = bool(hp.get("apply_decoder_bias_to_pre_encoder", False))
    if apply_b_dec and not math.isclose(s_in, s_out):
        raise ValueError(
            f"{hp_path}: apply_decoder_bias_to_pre_encoder with different input and output "
            "norms cannot be expressed as an SAELens SAE"
        )
    arrays = {
        "W_enc": enc.T * s_in,
        "b_enc": raw["encoder.bias"],
        "W_dec": dec.T / s_out,
        "b_dec": b_dec_raw / s_out,
    }
    if threshold is not None:
        arrays["threshold"] = threshold.astype(np.float32)

    arch = {"jumprelu": "jumprelu", "relu": "relu", "topk": "topk"}[act_fn]
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_model,
        d_sae=d_sae,
        k=int(require(hp, "top_k", hp_path)) if arch == "topk" else None,
        hook_name=hook_in,
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalization,
        dtype=dtype or "float32",
        model_name=hp.get("model_name"),
    )
    params = params_from_arrays(arrays, cfg, str(weights_path))
    logger.info(
        "loaded Llama Scope SAE %s (d_in=%d, d_sae=%d, input scale %.4g)",
        path,
        d_model,
        d_sae,
        s_in,
    )
    return params, cfg
