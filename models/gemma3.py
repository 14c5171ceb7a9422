"""Gemma-3 text decoder: config and checkpoint keys, from text-only or multimodal files.

Gemma-3 is Gemma-2 (see ``models/gemma2.py``) with four changes. Each head's q and k pass
through a ``(1 + w)`` RMSNorm before RoPE. Sliding layers use their own RoPE base
(``rope_local``), and a legacy ``rope_scaling`` entry applies to full-attention layers
only. By default five sliding layers precede each full one. Soft-capping is off
unless the config sets it.

Two kinds of checkpoint load here:

- ``model_type: gemma3_text`` (``Gemma3ForCausalLM``): decoder keys under ``model.``.
- ``model_type: gemma3`` (``Gemma3ForConditionalGeneration``): the decoder config sits in
  ``text_config`` and its weights under ``language_model.model.`` (hub files and
  transformers 5 saves) or ``model.language_model.`` (the module path inside transformers,
  which some releases write as is). Only the text decoder is built: vision tower and
  projector tensors are skipped, and the loader logs how many.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from models import gemma2
from models.config import ModelConfig, RopeConfig
from models.hf_config import UnsupportedConfigError, check_fields, eos_ids, rope_from_hf
from models.weights import KeyTable, WeightLoadError, identity

logger = logging.getLogger(__name__)

TEXT_HANDLED = gemma2.HANDLED | {
    "rope_local_base_freq",
    "sliding_window_pattern",
    # transformers writes this next to layer_types and reads only layer_types back.
    "_sliding_window_pattern",
}

# Fields of the multimodal wrapper that describe the image path, which is not ported.
WRAPPER_HANDLED = {
    "text_config",
    "vision_config",
    "mm_tokens_per_image",
    "boi_token_index",
    "eoi_token_index",
    "image_token_index",
}

# transformers' Gemma3TextConfig defaults when a file gives no RoPE base.
DEFAULT_GLOBAL_THETA = 1_000_000.0
DEFAULT_LOCAL_THETA = 10_000.0
DEFAULT_SLIDING_WINDOW_PATTERN = 6

# Key prefixes of the text decoder, in the layouts listed in the module docstring.
DECODER_PREFIXES = ("model.", "language_model.model.", "model.language_model.")
OTHER_MODULE_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def rope_configs_from_hf(config: Mapping[str, Any], path: str) -> tuple[RopeConfig, RopeConfig]:
    """``(full-attention, sliding-attention)`` RoPE settings from either config layout.

    Mirrors transformers' Gemma3TextConfig: per-layer-kind ``rope_parameters`` come first,
    a legacy ``rope_scaling`` updates the full-attention entry only, and ``rope_theta`` /
    ``rope_local_base_freq`` fill a missing base.
    """
    params = config.get("rope_parameters") or {}
    unknown = sorted(set(params) - set(gemma2.LAYER_KINDS))
    if unknown:
        raise UnsupportedConfigError(
            f"{path}: rope_parameters has keys {unknown}, but Gemma-3 expects one entry per "
            f"layer kind: {{'full_attention': {{...}}, 'sliding_attention': {{...}}}}"
        )
    full = dict(params.get("full_attention") or {})
    full.update(config.get("rope_scaling") or {})
    full.setdefault("rope_theta", config.get("rope_theta") or DEFAULT_GLOBAL_THETA)
    local = dict(params.get("sliding_attention") or {})
    local.setdefault("rope_theta", config.get("rope_local_base_freq") or DEFAULT_LOCAL_THETA)
    return (
        rope_from_hf(full, DEFAULT_GLOBAL_THETA, f"{path} (full_attention)"),
        rope_from_hf(local, DEFAULT_LOCAL_THETA, f"{path} (sliding_attention)"),
    )


def layer_types_from_hf(config: Mapping[str, Any], n_layers: int, path: str) -> tuple[str, ...]:
    """Per-layer kinds from ``layer_types``, else from ``sliding_window_pattern``.

    transformers' default: layer ``i`` is full when ``(i + 1)`` is a multiple of the pattern
    (6 unless the file sets it), sliding otherwise.
    """
    if config.get("layer_types") is not None:
        return gemma2.layer_types_from_hf(config["layer_types"], n_layers, path)
    pattern = config.get("sliding_window_pattern") or DEFAULT_SLIDING_WINDOW_PATTERN
    if not isinstance(pattern, int) or pattern < 1:
        raise ValueError(
            f"{path}: sliding_window_pattern={pattern!r} is invalid. Use a positive integer"
        )
    return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers))


def text_config_from_hf(
    config: Mapping[str, Any],
    path: str,
    *,
    multimodal: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """ModelConfig of a Gemma-3 text decoder config (a whole file or a ``text_config``).

    ``overrides`` replaces fields the multimodal wrapper sets at its top level.
    """
    from transformers import Gemma3TextConfig

    defaults = Gemma3TextConfig().to_dict()
    check_fields("gemma3_text", config, TEXT_HANDLED, defaults, path)

    def get(key: str) -> Any:
        return gemma2.field_or_default(config, defaults, key)

    # transformers' Gemma-3 attention never applies attn_logit_softcapping, and its
    # multimodal model never applies final_logit_softcapping: any port would be a guess.
    if config.get("attn_logit_softcapping") is not None:
        raise UnsupportedConfigError(
            f"{path}: attn_logit_softcapping={config['attn_logit_softcapping']!r} is not "
            f"supported for Gemma-3 because transformers ignores it. Set it to null"
        )
    final_softcap = gemma2.softcap_from_hf(config, defaults, "final_logit_softcapping")
    if multimodal and final_softcap is not None:
        raise UnsupportedConfigError(
            f"{path}: final_logit_softcapping={final_softcap!r} is not supported in a "
            f"multimodal gemma3 config because transformers' Gemma3ForConditionalGeneration "
            f"ignores it. Set it to null"
        )

    n_layers = int(get("num_hidden_layers"))
    layer_types = layer_types_from_hf(config, n_layers, path)
    rope_full, rope_local = rope_configs_from_hf(config, path)
    n_heads = int(get("num_attention_heads"))
    d_model = int(get("hidden_size"))
    bias = bool(get("attention_bias"))
    fields = dict(
        family="gemma3",
        vocab_size=int(get("vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads") or n_heads),
        head_dim=int(get("head_dim") or d_model // n_heads),
        d_ff=int(get("intermediate_size")),
        norm_eps=float(get("rms_norm_eps")),
        norm_type="rms_gemma",
        act=gemma2.activation_from_hf(config, defaults, path),
        rope=rope_full,
        rope_local=rope_local,
        layer_types=layer_types,
        sliding_window=gemma2.sliding_window_from_hf(config, defaults, layer_types, path),
        qk_norm=True,
        sandwich_norm=True,
        embed_scale=True,
        final_softcap=final_softcap,
        query_pre_attn_scalar=gemma2.query_scalar_from_hf(config, defaults, path),
        tie_embeddings=bool(get("tie_word_embeddings")),
        qkv_bias=bias,
        o_bias=bias,
        max_positions=int(get("max_position_embeddings")),
        bos_token_id=get("bos_token_id"),
        eos_token_ids=eos_ids(get("eos_token_id")),
        pad_token_id=get("pad_token_id"),
    )
    fields.update(overrides or {})
    return ModelConfig(**fields)


def config_from_hf(config: Mapping[str, Any], path: str = "config.json") -> ModelConfig:
    if config.get("model_type") != "gemma3":
        return text_config_from_hf(config, path)

    from transformers import Gemma3Config

    check_fields("gemma3", config, WRAPPER_HANDLED, Gemma3Config().to_dict(), path)
    text = config.get("text_config") or {}
    # The wrapper's own fields win: transformers ties lm_head by the top-level flag, and
    # multimodal files may give eos_token_id at the top level only.
    overrides: dict[str, Any] = {"tie_embeddings": bool(config.get("tie_word_embeddings", True))}
    if "eos_token_id" in config:
        overrides["eos_token_ids"] = eos_ids(config["eos_token_id"])
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("pad_token_id", "pad_token_id")):
        if theirs in config:
            overrides[ours] = config[theirs]
    logger.info("%s: multimodal gemma3 config, building its text decoder only", path)
    return text_config_from_hf(text, f"{path} (text_config)", multimodal=True, overrides=overrides)


def key_table(cfg: ModelConfig, prefix: str = "model.") -> KeyTable:
    """HF key -> [(param path, transform)] for a Gemma-3 decoder under ``prefix``."""
    table = gemma2.key_table(cfg, prefix)
    for i in range(cfg.n_layers):
        for norm in ("q_norm", "k_norm"):
            table[f"{prefix}layers.{i}.self_attn.{norm}.weight"] = [
                (f"layers.{i}.self_attn.{norm}.weight", identity)
            ]
    if not cfg.tie_embeddings and prefix == "language_model.model.":
        table["language_model.lm_head.weight"] = table.pop("lm_head.weight")
    return table


def key_table_for(cfg: ModelConfig, keys: Iterable[str]) -> KeyTable:
    """Build the key table for the decoder layout that this checkpoint's keys use."""
    keys = set(keys)
    found = [p for p in DECODER_PREFIXES if f"{p}embed_tokens.weight" in keys]
    if len(found) != 1:
        expected = ", ".join(f"{p}embed_tokens.weight" for p in DECODER_PREFIXES)
        raise WeightLoadError(
            f"Gemma-3 decoder weights not found: expected exactly one of {expected} "
            f"among the checkpoint keys, found {found or 'none'}"
        )
    return key_table(cfg, found[0])


def ignore_key(key: str) -> bool:
    """True for tensors of the vision tower and the multimodal projector."""
    return key.startswith(OTHER_MODULE_PREFIXES)
