"""Qwen3 (dense): config and checkpoint keys.

Qwen3 is the Llama layout plus an RMSNorm on each query and key head before RoPE
(``self_attn.q_norm``/``k_norm``, weight of size ``head_dim``), with ``head_dim`` set
explicitly rather than derived from ``hidden_size``. Sliding-window layers
(``use_sliding_window``) are supported with transformers' rule: layers at index
``max_window_layers`` and above slide, unless ``layer_types`` lists each layer's kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import llama
from models.config import ModelConfig
from models.hf_config import (
    UnsupportedConfigError,
    check_fields,
    eos_ids,
    require,
    rope_from_hf,
    rope_params,
)
from models.weights import KeyTable, identity

HANDLED = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "rms_norm_eps",
    "hidden_act",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
}

# transformers' layer kinds -> ours.
_LAYER_KINDS = {"full_attention": "full", "sliding_attention": "sliding"}


def _hf_defaults() -> dict[str, Any]:
    from transformers import Qwen3Config

    return Qwen3Config().to_dict()


def _layer_types(
    config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    n_layers: int,
    window: int | None,
    path: str,
) -> tuple[str, ...]:
    """Derive each layer's attention kind the way transformers' Qwen3Config does."""
    listed = config.get("layer_types")
    if listed is None:
        first_sliding = int(config.get("max_window_layers", defaults["max_window_layers"]))
        if window is None:
            return ("full",) * n_layers
        return tuple("sliding" if i >= first_sliding else "full" for i in range(n_layers))
    unknown = sorted(set(listed) - set(_LAYER_KINDS))
    if unknown:
        raise UnsupportedConfigError(
            f"{path}: layer_types contains {unknown}, which qwen3 does not support; "
            f"supported: {sorted(_LAYER_KINDS)}"
        )
    if len(listed) != n_layers:
        raise ValueError(
            f"{path}: layer_types has {len(listed)} entries but num_hidden_layers={n_layers}"
        )
    kinds = tuple(_LAYER_KINDS[kind] for kind in listed)
    if "sliding" in kinds and window is None:
        raise ValueError(
            f"{path}: layer_types lists sliding_attention layers but use_sliding_window is "
            f"false or sliding_window is null; set both, or list only full_attention layers"
        )
    return kinds


def config_from_hf(config: Mapping[str, Any], path: str = "config.json") -> ModelConfig:
    """Convert a Qwen3 ``config.json`` dict, rejecting fields the port does not implement."""
    defaults = _hf_defaults()
    check_fields("qwen3", config, HANDLED, defaults, path)
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(
            f"{path}: hidden_act={act!r} is not supported for qwen3; use 'silu'"
        )

    n_layers = require(config, "num_hidden_layers", path)
    n_heads = require(config, "num_attention_heads", path)
    # Missing fields take the transformers class defaults, as transformers itself does.
    n_kv_heads = config.get("num_key_value_heads", defaults["num_key_value_heads"]) or n_heads
    head_dim = config.get("head_dim", defaults["head_dim"])
    if not head_dim:
        raise ValueError(f"{path}: head_dim={head_dim!r} is invalid; set a positive head_dim")

    # transformers ignores sliding_window unless use_sliding_window is true.
    window = config.get("sliding_window") if config.get("use_sliding_window", False) else None
    if window is not None and window <= 0:
        raise ValueError(f"{path}: sliding_window={window} must be a positive number of tokens")

    bias = bool(config.get("attention_bias", False))
    return ModelConfig(
        family="qwen3",
        vocab_size=require(config, "vocab_size", path),
        d_model=require(config, "hidden_size", path),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        d_ff=require(config, "intermediate_size", path),
        norm_eps=float(config.get("rms_norm_eps", defaults["rms_norm_eps"])),
        rope=rope_from_hf(rope_params(config), 10000.0, path),
        layer_types=_layer_types(config, defaults, n_layers, window, path),
        sliding_window=window,
        qk_norm=True,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bias,
        o_bias=bias,
        max_positions=int(
            config.get("max_position_embeddings", defaults["max_position_embeddings"])
        ),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=eos_ids(config.get("eos_token_id")),
        pad_token_id=config.get("pad_token_id"),
    )


def key_table(cfg: ModelConfig, prefix: str = "model.") -> KeyTable:
    """Map HF keys of Qwen3ForCausalLM checkpoints to ``[(param path, transform)]``."""
    table = llama.key_table(cfg, prefix)
    for i in range(cfg.n_layers):
        for norm in ("q_norm", "k_norm"):
            table[f"{prefix}layers.{i}.self_attn.{norm}.weight"] = [
                (f"layers.{i}.self_attn.{norm}.weight", identity)
            ]
    return table
