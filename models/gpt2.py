"""GPT-2: config and checkpoint keys.

GPT-2 maps onto the shared decoder as LayerNorm blocks (``ln_1`` -> ``input_layernorm``,
``ln_2`` -> ``post_attention_layernorm``, ``ln_f`` -> ``norm``), a learned position table
(``wpe`` -> ``embed_positions``), an ungated MLP (``c_fc`` -> ``up_proj``, ``c_proj`` ->
``down_proj``), biases on every projection and, by default, a tied ``lm_head``.

Its ``Conv1D`` weights are already stored ``[in, out]``, so they load without a transpose.
The fused ``c_attn`` weight ``[d, 3d]`` is split along its output axis into the q, k and v
kernels. Checkpoints saved from ``GPT2LMHeadModel`` prefix every key with
``transformer.``; those saved from ``GPT2Model`` (the original ``gpt2`` files) do not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.hf_config import UnsupportedConfigError, check_fields, eos_ids, require
from models.weights import KeyTable, Transform, WeightLoadError, identity

HANDLED = {
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "scale_attn_weights",
}

# transformers ACT2FN names -> ours. gelu_new and gelu_pytorch_tanh are the same tanh
# approximation of GELU.
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}

# Causal-mask buffers that old checkpoints store next to the weights.
_BUFFER_KEY = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")


def _hf_defaults() -> dict[str, Any]:
    from transformers import GPT2Config

    return GPT2Config().to_dict()


def config_from_hf(config: Mapping[str, Any], path: str = "config.json") -> ModelConfig:
    """Convert a GPT-2 ``config.json`` dict, rejecting fields the port does not implement."""
    defaults = _hf_defaults()
    check_fields("gpt2", config, HANDLED, defaults, path)
    # check_fields skips this field as metadata, but it divides layer L's scores by L + 1.
    if config.get("scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedConfigError(
            f"{path}: scale_attn_by_inverse_layer_idx=True is not supported for gpt2; "
            f"only checkpoints trained without per-layer attention scaling load"
        )
    if config.get("add_cross_attention", False):
        raise UnsupportedConfigError(
            f"{path}: add_cross_attention=True is not supported; gpt2 loads as a decoder-only LM"
        )
    act_name = config.get("activation_function", defaults["activation_function"])
    if act_name not in ACTIVATIONS:
        raise UnsupportedConfigError(
            f"{path}: activation_function={act_name!r} is not supported for gpt2; "
            f"supported: {sorted(ACTIVATIONS)}"
        )

    d_model = require(config, "n_embd", path)
    n_heads = require(config, "n_head", path)
    if d_model % n_heads:
        raise ValueError(f"{path}: n_embd={d_model} is not a multiple of n_head={n_heads}")
    head_dim = d_model // n_heads
    # scale_attn_weights=False leaves scores unscaled: a pre-attention scalar of 1 gives
    # a multiplier of 1 ** -0.5.
    scale_weights = config.get("scale_attn_weights", defaults["scale_attn_weights"])
    return ModelConfig(
        family="gpt2",
        vocab_size=require(config, "vocab_size", path),
        d_model=d_model,
        n_layers=require(config, "n_layer", path),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        d_ff=config.get("n_inner") or 4 * d_model,
        norm_eps=float(config.get("layer_norm_epsilon", defaults["layer_norm_epsilon"])),
        norm_type="layernorm",
        act=ACTIVATIONS[act_name],
        gated_mlp=False,
        learned_positions=True,
        max_positions=int(config.get("n_positions", defaults["n_positions"])),
        query_pre_attn_scalar=None if scale_weights else 1.0,
        tie_embeddings=bool(config.get("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=eos_ids(config.get("eos_token_id")),
        pad_token_id=config.get("pad_token_id"),
    )


def _columns(start: int, stop: int) -> Transform:
    """Slice ``[start, stop)`` of a tensor's last axis (a fused projection's outputs)."""

    def take(w: np.ndarray) -> np.ndarray:
        return w[..., start:stop]

    return take


def key_table(cfg: ModelConfig, prefix: str = "") -> KeyTable:
    """Map GPT-2 checkpoint keys to ``[(param path, transform)]``.

    ``prefix`` is ``"transformer."`` for files saved from GPT2LMHeadModel, empty otherwise.
    """
    d = cfg.d_model
    table: KeyTable = {
        f"{prefix}wte.weight": [("embed_tokens.weight", identity)],
        f"{prefix}wpe.weight": [("embed_positions.weight", identity)],
        f"{prefix}ln_f.weight": [("norm.weight", identity)],
        f"{prefix}ln_f.bias": [("norm.bias", identity)],
    }
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = [("lm_head.weight", identity)]
    for i in range(cfg.n_layers):
        hf, ours = f"{prefix}h.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            # Conv1D weights are [in, out] and biases [out]: split both on the last axis.
            kernel_or_bias = "kernel" if part == "weight" else "bias"
            table[f"{hf}attn.c_attn.{part}"] = [
                (f"{ours}self_attn.{proj}.{kernel_or_bias}", _columns(j * d, (j + 1) * d))
                for j, proj in enumerate(("q_proj", "k_proj", "v_proj"))
            ]
            table[f"{hf}attn.c_proj.{part}"] = [
                (f"{ours}self_attn.o_proj.{kernel_or_bias}", identity)
            ]
            table[f"{hf}mlp.c_fc.{part}"] = [(f"{ours}mlp.up_proj.{kernel_or_bias}", identity)]
            table[f"{hf}mlp.c_proj.{part}"] = [(f"{ours}mlp.down_proj.{kernel_or_bias}", identity)]
            table[f"{hf}ln_1.{part}"] = [(f"{ours}input_layernorm.{part}", identity)]
            table[f"{hf}ln_2.{part}"] = [(f"{ours}post_attention_layernorm.{part}", identity)]
    return table


def key_table_for(cfg: ModelConfig, keys: Iterable[str]) -> KeyTable:
    """Build the key table for the prefix these checkpoint keys use (``transformer.`` or none).

    Raises WeightLoadError when the config ties the embeddings but the checkpoint stores its
    own ``lm_head.weight``: transformers 5 then unties them if the two tensors differ, and
    a tied model cannot hold a separate head.
    """
    keys = list(keys)
    prefix = "transformer." if any(k.startswith("transformer.") for k in keys) else ""
    if cfg.tie_embeddings and "lm_head.weight" in keys:
        raise WeightLoadError(
            "the checkpoint stores lm_head.weight but config.json has tie_word_embeddings="
            "true; set tie_word_embeddings to false so the stored head is loaded"
        )
    return key_table(cfg, prefix)


def ignore_key(key: str) -> bool:
    """Return whether ``key`` is a causal-mask buffer (``h.{L}.attn.bias`` or ``.masked_bias``)."""
    return bool(_BUFFER_KEY.search(key))
