"""Llama 3.x (and SmolLM2, which uses this architecture): config and checkpoint keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.config import ModelConfig
from models.hf_config import check_fields, eos_ids, require, rope_from_hf, rope_params
from models.weights import KeyTable, identity, transpose

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
    "mlp_bias",
    "pretraining_tp",
}


def config_from_hf(config: Mapping[str, Any], path: str = "config.json") -> ModelConfig:
    from transformers import LlamaConfig

    check_fields("llama", config, HANDLED, LlamaConfig().to_dict(), path)
    if config.get("pretraining_tp", 1) != 1:
        raise ValueError(
            f"{path}: pretraining_tp={config['pretraining_tp']} is not supported; only 1 is"
        )
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act={act!r} is not supported for llama; use 'silu'")
    n_heads = require(config, "num_attention_heads", path)
    d_model = require(config, "hidden_size", path)
    bias = bool(config.get("attention_bias", False))
    return ModelConfig(
        family="llama",
        vocab_size=require(config, "vocab_size", path),
        d_model=d_model,
        n_layers=require(config, "num_hidden_layers", path),
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        head_dim=config.get("head_dim") or d_model // n_heads,
        d_ff=require(config, "intermediate_size", path),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope=rope_from_hf(rope_params(config), 10000.0, path),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        max_positions=int(config.get("max_position_embeddings", 2048)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=eos_ids(config.get("eos_token_id")),
        pad_token_id=config.get("pad_token_id"),
    )


def key_table(cfg: ModelConfig, prefix: str = "model.") -> KeyTable:
    """HF key -> [(param path, transform)] for LlamaForCausalLM-style checkpoints."""
    table: KeyTable = {
        f"{prefix}embed_tokens.weight": [("embed_tokens.weight", identity)],
        f"{prefix}norm.weight": [("norm.weight", identity)],
    }
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = [("lm_head.weight", identity)]
    for i in range(cfg.n_layers):
        hf, ours = f"{prefix}layers.{i}.", f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            table[f"{hf}self_attn.{proj}.weight"] = [(f"{ours}self_attn.{proj}.kernel", transpose)]
            has_bias = cfg.o_bias if proj == "o_proj" else cfg.qkv_bias
            if has_bias:
                table[f"{hf}self_attn.{proj}.bias"] = [(f"{ours}self_attn.{proj}.bias", identity)]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            table[f"{hf}mlp.{proj}.weight"] = [(f"{ours}mlp.{proj}.kernel", transpose)]
            if cfg.mlp_bias:
                table[f"{hf}mlp.{proj}.bias"] = [(f"{ours}mlp.{proj}.bias", identity)]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            table[f"{hf}{norm}.weight"] = [(f"{ours}{norm}.weight", identity)]
    return table
