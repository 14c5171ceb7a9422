"""Load a model from a local HF directory, a hub id, or a GGUF file.

``load_model`` returns the split model ``(graphdef, state)`` ready for the pure forward,
with its config and tokenizer. Parameters are read one tensor at a time and placed
straight into their final dtype (and sharding, when a ``place`` function is given).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.registry import family_module
from models.transformer import DecoderLM
from models.weights import WeightLoadError, fill_state, iter_safetensors

logger = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass
class LoadedModel:
    graphdef: nnx.GraphDef
    state: nnx.State
    config: ModelConfig
    tokenizer: Any  # a transformers tokenizer, or None when the source has none
    source: str


def resolve_dtype(dtype: str | Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def abstract_model(cfg: ModelConfig, dtype: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """Graphdef and shape-only state, without allocating any weights."""
    model = nnx.eval_shape(lambda: DecoderLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def init_model(
    cfg: ModelConfig, *, seed: int = 0, dtype: Any = jnp.float32
) -> tuple[nnx.GraphDef, nnx.State]:
    """A randomly initialised model (tests and SAE toy runs)."""
    return nnx.split(DecoderLM(cfg, dtype=resolve_dtype(dtype), rngs=nnx.Rngs(seed)))


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | Any = "float32",
    load_tokenizer: bool = True,
    place: Callable[[str, Any], jax.Array] | None = None,
) -> LoadedModel:
    """Load a decoder LM from a directory, a ``.gguf`` file, or a hub id."""
    dtype = resolve_dtype(dtype)
    p = Path(path)
    if p.suffix == ".gguf":
        from models.gguf import load_gguf

        return load_gguf(p, dtype=dtype, load_tokenizer=load_tokenizer, place=place)
    if not p.exists():
        if _looks_like_hub_id(str(path)):
            p = _download(str(path))
        else:
            raise FileNotFoundError(
                f"model path {str(path)!r} does not exist; pass a local HF "
                f"directory (config.json + *.safetensors) or a .gguf file"
            )
    if p.is_file():
        raise ValueError(f"{p}: expected a directory with config.json or a .gguf file")
    config_file = p / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{p}: no config.json; is this an HF model directory?")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: invalid JSON ({err})") from None
    family = family_module(hf_config.get("model_type"), str(config_file))
    cfg = family.config_from_hf(hf_config, str(config_file))
    files = safetensors_files(p)
    graphdef, abstract = abstract_model(cfg, dtype)
    table = (
        family.key_table_for(cfg, _first_keys(files))
        if hasattr(family, "key_table_for")
        else family.key_table(cfg)
    )
    ignore = getattr(family, "ignore_key", lambda key: False)
    logger.info(
        "loading %s (%s, %d layers) from %s", cfg.family, jnp.dtype(dtype).name, cfg.n_layers, p
    )
    state = fill_state(
        abstract,
        iter_safetensors(files),
        table,
        dtype=dtype,
        source=str(p),
        ignore=ignore,
        place=place,
    )
    tokenizer = _load_tokenizer(p) if load_tokenizer else None
    return LoadedModel(graphdef, state, cfg, tokenizer, str(p))


def safetensors_files(directory: Path) -> list[str]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).exists()]
        if missing:
            raise FileNotFoundError(f"{index}: names shards that are missing: {missing}")
        return [str(directory / f) for f in files]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{directory}: no *.safetensors files (PyTorch .bin "
            f"checkpoints are not supported; convert them to safetensors)"
        )
    return [str(f) for f in files]


def _first_keys(files: list[str]) -> list[str]:
    from safetensors import SafetensorError, safe_open

    keys: list[str] = []
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                keys.extend(f.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadError(
                f"{file}: cannot read safetensors file ({err}); the file is "
                f"corrupt or not safetensors"
            ) from None
    return keys


def _load_tokenizer(directory: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((directory / n).exists() for n in names):
        logger.warning("%s: no tokenizer files; tokenizer is None", directory)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/"))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
        )
    except Exception as err:  # noqa: BLE001 - any hub failure means the same to the user
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}); download it elsewhere and pass the local directory"
        ) from None
    return Path(local)
