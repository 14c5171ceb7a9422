"""Export a model to an HF-format directory (``config.json`` + ``model.safetensors``).

The tensors come from inverting the family's loading key table (``models/<family>.py``):
each HF key maps to the parameter paths it fills and a transform. Identity and transpose
invert directly. Any other transform is inverted by trying candidates: the parameter as is,
transposed, or several parameters concatenated on their last or first axis (which undoes
GPT-2's fused ``c_attn`` split). The first candidate that the forward transform maps back
to every parameter exactly is kept. A key with no such candidate, and a parameter no key
covers, raise :class:`ExportError`.

``config.json`` is the source model's file when there is one (a model loaded from an HF
directory). Otherwise it is generated from the :class:`~models.config.ModelConfig` for
llama, qwen3 and gpt2. Either way it must convert back to the same ``ModelConfig`` through
the family's ``config_from_hf``, or the export raises instead of writing a model that
loads differently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.registry import family_module
from models.weights import KeyTable, identity, transpose

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Key prefix of each family's *ForCausalLM checkpoints, where it is not the table default.
CAUSAL_LM_PREFIX = {"gpt2": "transformer."}
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}


class ExportError(ValueError):
    """A model that cannot be written in HF format faithfully."""


def _rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    rope = cfg.rope
    params: dict[str, Any] = {"rope_type": rope.rope_type, "rope_theta": rope.theta}
    if rope.rope_type in ("linear", "llama3"):
        params["factor"] = rope.factor
    if rope.rope_type == "llama3":
        params["low_freq_factor"] = rope.low_freq_factor
        params["high_freq_factor"] = rope.high_freq_factor
        params["original_max_position_embeddings"] = rope.original_max_position_embeddings
    return params


def _special_tokens(cfg: ModelConfig) -> dict[str, Any]:
    eos: Any = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else None
    if len(cfg.eos_token_ids) == 1:
        eos = cfg.eos_token_ids[0]
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id}


def hf_config_from_model(cfg: ModelConfig) -> dict[str, Any]:
    """Generate an HF ``config.json`` dict for a llama, qwen3 or gpt2 ModelConfig."""
    common = {
        "architectures": [ARCHITECTURES.get(cfg.family, "")],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        **_special_tokens(cfg),
    }
    if cfg.family in ("llama", "qwen3"):
        out = {
            **common,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps,
            "max_position_embeddings": cfg.max_positions,
            "rope_parameters": _rope_parameters(cfg),
            "attention_bias": cfg.qkv_bias,
        }
        if cfg.family == "llama":
            out["mlp_bias"] = cfg.mlp_bias
        elif cfg.sliding_window is not None:
            kinds = {"full": "full_attention", "sliding": "sliding_attention"}
            out["use_sliding_window"] = True
            out["sliding_window"] = cfg.sliding_window
            out["layer_types"] = [kinds[k] for k in cfg.layer_types]
        return out
    if cfg.family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[cfg.act]
        return {
            **common,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_positions,
            "activation_function": act,
            "layer_norm_epsilon": cfg.norm_eps,
            "scale_attn_weights": cfg.query_pre_attn_scalar is None,
        }
    raise ExportError(
        f"cannot generate config.json for family {cfg.family!r} (supported: llama, qwen3, "
        "gpt2); export a model loaded from an HF directory so its config.json is reused"
    )


def source_hf_config(source: str | Path | None) -> dict[str, Any] | None:
    """Return the ``config.json`` dict of a model loaded from an HF directory, else None."""
    if source is None:
        return None
    path = Path(source) / CONFIG_FILE
    if not Path(source).is_dir() or not path.exists():
        return None
    return json.loads(path.read_text())


def check_config_roundtrip(hf_config: Mapping[str, Any], cfg: ModelConfig) -> None:
    """Raise ExportError unless ``hf_config`` converts back to ``cfg``."""
    family = family_module(hf_config.get("model_type"), CONFIG_FILE)
    back = family.config_from_hf(hf_config, CONFIG_FILE)
    diffs = [
        f"{f.name}: {getattr(back, f.name)!r} != {getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(back, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        raise ExportError(
            "config.json would load as a different model: " + "; ".join(diffs) + ". Pass "
            "the model's own config.json as hf_config"
        )


def _invert_one(key: str, targets: list, values: list[np.ndarray]) -> np.ndarray:
    if len(targets) == 1 and targets[0][1] is identity:
        return values[0]
    if len(targets) == 1 and targets[0][1] is transpose:
        return values[0].T
    if len(targets) == 1:
        candidates = [values[0]] + ([values[0].T] if values[0].ndim == 2 else [])
    else:
        candidates = []
        for axis in (-1, 0):
            try:
                candidates.append(np.concatenate(values, axis=axis))
            except ValueError:
                continue
    for candidate in candidates:
        mapped = [np.asarray(transform(candidate)) for _, transform in targets]
        if all(
            m.shape == v.shape and np.array_equal(m, v) for m, v in zip(mapped, values, strict=True)
        ):
            return candidate
    paths = [path for path, _ in targets]
    raise ExportError(
        f"cannot invert the loading transform of {key!r} (fills {paths}); add an export rule "
        "for this key"
    )


def invert_key_table(table: KeyTable, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Return ``{hf key: tensor}`` that loads back into exactly ``params``."""
    covered = {path for targets in table.values() for path, _ in targets}
    uncovered = sorted(set(params) - covered)
    if uncovered:
        raise ExportError(f"no checkpoint key fills parameters {uncovered[:8]}")
    missing = sorted(covered - set(params))
    if missing:
        raise ExportError(f"the key table names parameters the model lacks: {missing[:8]}")
    tensors = {}
    for key, targets in table.items():
        values = [np.asarray(params[path], np.float32) for path, _ in targets]
        tensors[key] = np.ascontiguousarray(_invert_one(key, targets, values))
    return tensors


def export_hf(
    out_dir: str | Path,
    params: Mapping[str, Any],
    cfg: ModelConfig,
    *,
    hf_config: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    dtype: str = "float32",
) -> Path:
    """Write ``params`` (flat ``{path: array}``) as an HF model directory.

    Args:
      out_dir: directory to create or overwrite files in.
      params: flat parameters (``train.params.flatten_state``), LoRA already merged.
      cfg: the model's config.
      hf_config: the source ``config.json`` dict; generated from ``cfg`` when None.
      tokenizer: an HF tokenizer to save next to the weights, or None.
      dtype: ``float32`` or ``bfloat16`` tensors.
    """
    import ml_dtypes
    from safetensors.numpy import save_file

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={dtype!r}; use float32 or bfloat16")
    if hf_config is not None and hf_config.get("model_type") == "gemma3":
        raise ExportError(
            "the source is a multimodal Gemma-3 config; only the text decoder is trained, so "
            "export with a gemma3_text config.json (set hf_config to its text_config)"
        )
    config = dict(hf_config) if hf_config is not None else hf_config_from_model(cfg)
    check_config_roundtrip(config, cfg)
    config["dtype"] = dtype
    config.pop("torch_dtype", None)

    family = family_module(config["model_type"], CONFIG_FILE)
    prefix = CAUSAL_LM_PREFIX.get(cfg.family)
    table = family.key_table(cfg, prefix) if prefix is not None else family.key_table(cfg)
    tensors = invert_key_table(table, params)
    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    logger.info("exported %d tensors (%s) to %s", len(tensors), dtype, out_dir)
    return out_dir
