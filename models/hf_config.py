"""Reading HF ``config.json`` dicts: rotary settings and the unsupported-field check."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from models.config import RopeConfig

# Fields that describe the checkpoint or the runtime, not the math of the forward pass.
METADATA_FIELDS = frozenset(
    {
        "architectures",
        "model_type",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "use_cache",
        "initializer_range",
        "_name_or_path",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "max_position_embeddings",
        "attention_dropout",
        "hidden_dropout",
        "embd_pdrop",
        "resid_pdrop",
        "attn_pdrop",
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "task_specific_params",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "is_decoder",
        "add_cross_attention",
        "tokenizer_class",
        "prefix",
        "sep_token_id",
        "decoder_start_token_id",
        "finetuning_task",
        "cross_attention_hidden_size",
        "pruned_heads",
        "tf_legacy_loss",
        "use_bfloat16",
        "torchscript",
        "tie_encoder_decoder",
        "quantization_config",
        "auto_map",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "use_return_dict",
        "output_scores",
        "output_router_logits",
        "cache_implementation",
        "n_ctx",
        "reorder_and_upcast_attn",
        "scale_attn_by_inverse_layer_idx",
        "max_window_layers",
        "classifier_dropout",
        "num_labels",
        "_commit_hash",
        "chat_template",
        "base_model_tp_plan",
        "base_model_pp_plan",
        "final_dropout",
        "mlp_dropout",
        "vocab_size_per_layer_input",
        "use_sliding_window",
    }
)


class UnsupportedConfigError(ValueError):
    """A config field this port does not implement."""


def check_fields(
    family: str,
    config: Mapping[str, Any],
    handled: Iterable[str],
    defaults: Mapping[str, Any],
    path: str,
) -> None:
    """Reject fields that change the model's math but that the port does not read.

    A field counts as unsupported when it is neither handled nor metadata and its value
    differs from the transformers config class default for this family.
    """
    handled = set(handled) | METADATA_FIELDS
    offending = []
    for key, value in config.items():
        if key in handled:
            continue
        if key in defaults and defaults[key] == value:
            continue
        if value is None or value is False:
            continue
        offending.append(f"{key}={value!r}")
    if offending:
        raise UnsupportedConfigError(
            f"{path}: {family} config has fields this port does not implement: "
            f"{', '.join(sorted(offending))}. Remove them if they are inert, or use a "
            f"supported model."
        )


def require(config: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in config or config[key] is None:
        raise ValueError(f"{path}: config is missing the required field {key!r}")
    return config[key]


def rope_from_hf(params: Mapping[str, Any] | None, default_theta: float, path: str) -> RopeConfig:
    """Build a RopeConfig from a ``rope_parameters``/``rope_scaling`` style dict."""
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    theta = float(params.get("rope_theta", default_theta))
    if rope_type == "default":
        return RopeConfig(theta=theta)
    if rope_type == "linear":
        return RopeConfig(theta=theta, rope_type="linear", factor=float(params["factor"]))
    if rope_type == "llama3":
        return RopeConfig(
            theta=theta,
            rope_type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise UnsupportedConfigError(
        f"{path}: rope type {rope_type!r} is not supported (supported: default, linear, llama3)"
    )


def rope_params(config: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """Rotary settings of one attention kind, from either config layout.

    transformers >= 5 writes ``rope_parameters`` (per layer kind for Gemma-3); older files
    write ``rope_theta`` and ``rope_scaling``.
    """
    params = config.get("rope_parameters")
    if params:
        if kind is not None and kind in params:
            return dict(params[kind])
        if kind is None or "rope_type" in params or "rope_theta" in params:
            return dict(params)
    merged = dict(config.get("rope_scaling") or {})
    if "rope_theta" in config:
        merged.setdefault("rope_theta", config["rope_theta"])
    return merged


def eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
