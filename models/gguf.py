"""Load a GGUF file (llama.cpp's format) through the ``gguf`` package.

Quantized tensors are dequantized to float32 one at a time, then cast to the requested
dtype. llama.cpp's converter permutes the rows of Llama-family Q and K projections to suit
its RoPE kernel; they are permuted back here so the HF-layout key table applies. The
tokenizer is the one embedded in the file (``models.gguf_tokenizer``, no PyTorch needed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from models import llama
from models.config import ModelConfig, RopeConfig
from models.gguf_tokenizer import gguf_tokenizer
from models.registry import UnknownArchitectureError
from models.weights import WeightLoadError, fill_state

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor name (after "blk.{i}.") -> HF name (after "model.layers.{i}.").
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of a Q or K weight ``[out, in]``."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _open(path: Path):
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises bare ValueError/struct errors
        raise WeightLoadError(
            f"{path}: not a readable GGUF file ({type(err).__name__}: {err})"
        ) from None


def config_from_gguf(reader, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnknownArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def need(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise WeightLoadError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    d_model, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.rope.dimension_count", d_model // n_heads))
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rope = RopeConfig(theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)))
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise WeightLoadError(f"{path}: GGUF rope scaling {scaling!r} is not supported")
    names = {t.name for t in reader.tensors}
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family="llama",
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        d_ff=int(need("feed_forward_length")),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope=rope,
        tie_embeddings="output.weight" not in names,
        max_positions=int(_field(reader, f"{arch}.context_length", 2048)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def iter_gguf_tensors(reader, cfg: ModelConfig, path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(HF key, float32 array)`` with Q/K rows restored to the HF layout."""
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        name = tensor.name
        if name in _TOP_NAMES:
            key = _TOP_NAMES[name]
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in _BLOCK_NAMES:
                raise WeightLoadError(f"{path}: GGUF tensor {name!r} is not used by the model")
            key = f"model.layers.{layer}.{_BLOCK_NAMES[rest]}"
        else:
            raise WeightLoadError(f"{path}: GGUF tensor {name!r} is not used by the model")
        try:
            w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise WeightLoadError(
                f"{path}: tensor {name!r} has quantization "
                f"{tensor.tensor_type.name}, which gguf cannot "
                f"dequantize"
            ) from None
        w = w.reshape([int(d) for d in reversed(tensor.shape)])
        if name.endswith("attn_q.weight"):
            w = unpermute_rows(w, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_rows(w, cfg.n_kv_heads)
        yield key, w


def load_gguf(
    path: Path,
    *,
    dtype: Any,
    load_tokenizer: bool = True,
    place: Callable[[str, Any], jax.Array] | None = None,
):
    from models.loading import LoadedModel, abstract_model

    path = Path(path)
    reader = _open(path)
    cfg = config_from_gguf(reader, path)
    graphdef, abstract = abstract_model(cfg, dtype)
    logger.info(
        "loading GGUF %s (%s, %d layers, d_model %d)",
        path.name,
        cfg.family,
        cfg.n_layers,
        cfg.d_model,
    )
    state = fill_state(
        abstract,
        iter_gguf_tensors(reader, cfg, path),
        llama.key_table(cfg),
        dtype=dtype,
        source=str(path),
        place=place,
    )
    tokenizer = gguf_tokenizer(path, reader) if load_tokenizer else None
    return LoadedModel(graphdef, state, cfg, tokenizer, str(path))
