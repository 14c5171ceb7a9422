"""Gemma-2: config and checkpoint keys.

The shared decoder runs Gemma-2 from config flags alone. Its quirks: ``(1 + w)`` RMSNorm,
embeddings times sqrt(d_model), and tanh soft-capping of attention scores and of the final
logits. Attention scores are scaled by ``query_pre_attn_scalar ** -0.5``, and
sliding-window layers alternate with full ones. Each block has four norms
(``input_layernorm``, ``post_attention_layernorm`` on the attention output,
``pre_feedforward_layernorm``, ``post_feedforward_layernorm``). The MLP is gated with the
tanh approximation of GELU, and the embeddings are tied.

``models/gemma3.py`` reuses the helpers below for the fields Gemma-3 shares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from models import llama
from models.config import ModelConfig
from models.hf_config import (
    UnsupportedConfigError,
    check_fields,
    eos_ids,
    rope_from_hf,
    rope_params,
)
from models.weights import KeyTable, identity

logger = logging.getLogger(__name__)

HANDLED = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "rms_norm_eps",
    "hidden_activation",
    "hidden_act",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "query_pre_attn_scalar",
    "sliding_window",
    "sliding_window_size",
    "layer_types",
    "attn_logit_softcapping",
    "final_logit_softcapping",
}

# HF activation name -> ModelConfig.act.
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}

# HF layer type -> ModelConfig.layer_types entry.
LAYER_KINDS = {"sliding_attention": "sliding", "full_attention": "full"}


def field_or_default(config: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or the transformers config class default when the file omits it."""
    return config[key] if key in config else defaults.get(key)


def activation_from_hf(config: Mapping[str, Any], defaults: Mapping[str, Any], path: str) -> str:
    """MLP activation from ``hidden_activation``.

    transformers' Gemma-2/3 read only ``hidden_activation``. Older files repeat it as
    ``hidden_act``, and a differing ``hidden_act`` is rejected because the intent is unclear.
    """
    name = field_or_default(config, defaults, "hidden_activation")
    if name not in ACTIVATIONS:
        raise UnsupportedConfigError(
            f"{path}: hidden_activation={name!r} is not supported. Supported: "
            f"{', '.join(sorted(ACTIVATIONS))}"
        )
    legacy = config.get("hidden_act")
    if legacy is not None and legacy != name:
        raise UnsupportedConfigError(
            f"{path}: hidden_act={legacy!r} differs from hidden_activation={name!r}. "
            f"transformers uses hidden_activation only, so remove hidden_act or make them equal"
        )
    return ACTIVATIONS[name]


def layer_types_from_hf(raw: Any, n_layers: int, path: str) -> tuple[str, ...]:
    """Convert HF ``layer_types`` (``sliding_attention`` / ``full_attention``) entries."""
    raw = list(raw)
    if len(raw) != n_layers:
        raise ValueError(
            f"{path}: layer_types has {len(raw)} entries but num_hidden_layers={n_layers}"
        )
    unknown = sorted({kind for kind in raw if kind not in LAYER_KINDS})
    if unknown:
        raise UnsupportedConfigError(
            f"{path}: layer_types contains {unknown}, which is not supported. "
            f"Supported: {', '.join(LAYER_KINDS)}"
        )
    return tuple(LAYER_KINDS[kind] for kind in raw)


def sliding_window_from_hf(
    config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    layer_types: tuple[str, ...],
    path: str,
) -> int | None:
    """Window of the sliding layers: a query attends to keys fewer than this many slots back."""
    window = field_or_default(config, defaults, "sliding_window")
    legacy = config.get("sliding_window_size")
    if legacy is not None and legacy != window:
        raise UnsupportedConfigError(
            f"{path}: sliding_window_size={legacy!r} differs from sliding_window={window!r}. "
            f"transformers uses sliding_window only, so remove sliding_window_size"
        )
    if "sliding" not in layer_types:
        return None
    if not window or int(window) <= 0:
        raise ValueError(
            f"{path}: layer_types has sliding layers but sliding_window={window!r}, so "
            f"set a positive sliding_window"
        )
    return int(window)


def softcap_from_hf(
    config: Mapping[str, Any], defaults: Mapping[str, Any], key: str
) -> float | None:
    value = field_or_default(config, defaults, key)
    return None if value is None else float(value)


def query_scalar_from_hf(
    config: Mapping[str, Any], defaults: Mapping[str, Any], path: str
) -> float:
    """``query_pre_attn_scalar``: attention scores are scaled by its inverse square root."""
    value = field_or_default(config, defaults, "query_pre_attn_scalar")
    if value is None or float(value) <= 0:
        raise ValueError(
            f"{path}: query_pre_attn_scalar={value!r} is invalid. Gemma needs a positive "
            f"number (usually head_dim)"
        )
    return float(value)


def config_from_hf(config: Mapping[str, Any], path: str = "config.json") -> ModelConfig:
    from transformers import Gemma2Config

    defaults = Gemma2Config().to_dict()
    check_fields("gemma2", config, HANDLED, defaults, path)

    def get(key: str) -> Any:
        return field_or_default(config, defaults, key)

    n_layers = int(get("num_hidden_layers"))
    if config.get("layer_types") is not None:
        layer_types = layer_types_from_hf(config["layer_types"], n_layers, path)
    else:
        # transformers' default for Gemma-2: even layers slide, odd layers are full.
        layer_types = tuple("sliding" if i % 2 == 0 else "full" for i in range(n_layers))
    n_heads = int(get("num_attention_heads"))
    d_model = int(get("hidden_size"))
    bias = bool(get("attention_bias"))
    return ModelConfig(
        family="gemma2",
        vocab_size=int(get("vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads") or n_heads),
        head_dim=int(get("head_dim") or d_model // n_heads),
        d_ff=int(get("intermediate_size")),
        norm_eps=float(get("rms_norm_eps")),
        norm_type="rms_gemma",
        act=activation_from_hf(config, defaults, path),
        rope=rope_from_hf(rope_params(config), 10000.0, path),
        layer_types=layer_types,
        sliding_window=sliding_window_from_hf(config, defaults, layer_types, path),
        sandwich_norm=True,
        embed_scale=True,
        attn_softcap=softcap_from_hf(config, defaults, "attn_logit_softcapping"),
        final_softcap=softcap_from_hf(config, defaults, "final_logit_softcapping"),
        query_pre_attn_scalar=query_scalar_from_hf(config, defaults, path),
        tie_embeddings=bool(get("tie_word_embeddings")),
        qkv_bias=bias,
        o_bias=bias,
        max_positions=int(get("max_position_embeddings")),
        bos_token_id=get("bos_token_id"),
        eos_token_ids=eos_ids(get("eos_token_id")),
        pad_token_id=get("pad_token_id"),
    )


def key_table(cfg: ModelConfig, prefix: str = "model.") -> KeyTable:
    """HF key -> [(param path, transform)] for Gemma2ForCausalLM-style checkpoints."""
    table = llama.key_table(cfg, prefix)
    for i in range(cfg.n_layers):
        for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            table[f"{prefix}layers.{i}.{norm}.weight"] = [(f"layers.{i}.{norm}.weight", identity)]
    return table
