"""SAELens directories (``cfg.json`` + ``sae_weights.safetensors``): load, save, detect.

Reading accepts SAELens 6.x configs (hook name under ``meta``) and older ones
(``hook_name`` or ``hook_point`` at the top level, TopK ``k`` under
``activation_fn_kwargs``, boolean ``normalize_activations``). Writing produces a SAELens
6.x config, so SAEs trained here load in SAELens:

- ``relu`` is written as SAELens' "standard";
- ``batchtopk`` is written as "jumprelu" with its learned global threshold, as SAELens
  itself saves trained BatchTopK SAEs (the inference rule is the same);
- an ``expected_average_only_in`` scaling factor is folded into the weights
  (``W_enc * s``, ``W_dec / s``, ``b_dec / s``) and the config is set to "none", because
  SAELens' cfg.json has no field for the factor.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from sae.config import SAEConfig, canonical_architecture, numpy_dtype
from sae.params import PARAM_NAMES, SAEParams, params_from_arrays

logger = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
METRICS_FILENAME = "metrics.json"
# Written into meta.sae_lens_version so SAELens reads the file with its 6.x config rules.
SAELENS_FORMAT_VERSION = "6.0.0"


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def require(cfg: Mapping[str, Any], key: str, source: Path) -> Any:
    """Return ``cfg[key]`` or raise ValueError naming the file and the missing field."""
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{source}: missing required field {key!r}")
    return cfg[key]


def _normalization(value: Any, source: Path) -> str:
    if value is None or value is False:
        return "none"
    if value is True:  # SAELens < 3 stored a boolean
        return "expected_average_only_in"
    if value == "layer_norm":
        raise ValueError(
            f"{source}: normalize_activations='layer_norm' is not supported; supported are "
            "'none', 'expected_average_only_in', 'constant_norm_rescale'"
        )
    return str(value)


def config_from_saelens_dict(
    raw: Mapping[str, Any], source: Path, *, dtype: str | None = None
) -> SAEConfig:
    """Build an ``SAEConfig`` from a SAELens cfg.json dict (any SAELens version)."""
    meta = raw.get("meta") or {}

    def field(name: str, *aliases: str) -> Any:
        for key in (name, *aliases):
            if raw.get(key) is not None:
                return raw[key]
            if meta.get(key) is not None:
                return meta[key]
        return None

    d_in = int(require(raw, "d_in", source))
    d_sae = int(require(raw, "d_sae", source))
    hook_name = field("hook_name", "hook_point")
    if hook_name is None:
        raise ValueError(f"{source}: missing required field 'hook_name' (or 'hook_point')")

    # SAELens treats a config without architecture as its ReLU ("standard") SAE.
    arch_name = str(raw.get("architecture") or "standard")
    activation_fn = raw.get("activation_fn") or raw.get("activation_fn_str")
    if arch_name == "standard" and activation_fn == "topk":
        arch_name = "topk"  # SAELens < 6 kept TopK SAEs under "standard"
    try:
        architecture = canonical_architecture(arch_name)
    except ValueError as err:
        raise ValueError(f"{source}: field 'architecture': {err}") from err

    k = None
    if architecture in ("topk", "batchtopk"):
        k = raw.get("k")
        if k is None:
            k = (raw.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise ValueError(f"{source}: missing required field 'k' for a {architecture} SAE")
        k = int(k)

    try:
        return SAEConfig(
            architecture=architecture,
            d_in=d_in,
            d_sae=d_sae,
            k=k,
            hook_name=str(hook_name),
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            normalize_activations=_normalization(raw.get("normalize_activations"), source),
            norm_scaling_factor=raw.get("norm_scaling_factor"),
            dtype=dtype or str(raw.get("dtype") or "float32"),
            model_name=field("model_name"),
            dataset_path=field("dataset_path"),
            context_size=field("context_size"),
            prepend_bos=field("prepend_bos"),
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err


def _weights_from_saelens(state: dict[str, np.ndarray], cfg: SAEConfig, source: Path):
    """Map a SAELens state dict onto PARAM_NAMES, folding SAELens-only tensors."""
    state = dict(state)
    if "log_threshold" in state:  # SAELens JumpReLU training checkpoints
        state["threshold"] = np.exp(state.pop("log_threshold").astype(np.float32))
    if "topk_threshold" in state:  # SAELens BatchTopK training checkpoints (a scalar)
        scalar = np.asarray(state.pop("topk_threshold"), np.float32).reshape(-1)[0]
        state["threshold"] = np.full((cfg.d_sae,), scalar, np.float32)
    if "scaling_factor" in state:
        # Fine-tuning scale multiplying the feature activations before the decoder.
        scale = np.asarray(state.pop("scaling_factor"), np.float32)
        if not np.allclose(scale, 1.0) and "W_dec" in state:
            state["W_dec"] = state["W_dec"].astype(np.float32) * scale[:, None]
    unknown = sorted(set(state) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"{source}: unexpected tensors {unknown}; expected {list(PARAM_NAMES)}")
    return state


def load_saelens(path: str | Path, *, dtype: str | None = None) -> tuple[SAEParams, SAEConfig]:
    """Load a SAELens SAE directory; ``dtype`` overrides the dtype in cfg.json."""
    path = Path(path)
    cfg_path = path / CFG_FILENAME
    weights_path = path / WEIGHTS_FILENAME
    cfg = config_from_saelens_dict(read_json(cfg_path), cfg_path, dtype=dtype)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found")
    state = _weights_from_saelens(safetensors.numpy.load_file(weights_path), cfg, weights_path)
    params = params_from_arrays(state, cfg, str(weights_path))
    logger.info("loaded %s SAE %s (d_in=%d, d_sae=%d)", cfg.architecture, path, cfg.d_in, cfg.d_sae)
    return params, cfg


def fold_norm_scaling_factor(params: SAEParams, cfg: SAEConfig) -> tuple[SAEParams, SAEConfig]:
    """Fold an ``expected_average_only_in`` factor ``s`` into the weights.

    The folded SAE reads raw activations with ``normalize_activations="none"`` and gives
    the same features and reconstruction: ``W_enc * s``, ``W_dec / s``, ``b_dec / s``.
    Other SAEs are returned unchanged.
    """
    if cfg.normalize_activations != "expected_average_only_in":
        return params, cfg
    factor = cfg.norm_scaling_factor
    new_cfg = cfg.replace(normalize_activations="none", norm_scaling_factor=None)
    if factor is None:
        return params, new_cfg
    folded = params.replace(
        W_enc=(params.W_enc * factor).astype(params.W_enc.dtype),
        W_dec=(params.W_dec / factor).astype(params.W_dec.dtype),
        b_dec=(params.b_dec / factor).astype(params.b_dec.dtype),
    )
    return folded, new_cfg


def saelens_cfg_dict(cfg: SAEConfig) -> dict[str, Any]:
    """Build the cfg.json contents for ``cfg`` (fold the scaling factor first)."""
    arch = {"relu": "standard", "batchtopk": "jumprelu"}.get(cfg.architecture, cfg.architecture)
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
    }
    if arch == "topk":
        out["k"] = int(cfg.k)
    # SAELens 6.x rejects unknown keys inside "meta" (its SAEMetadata dataclass).
    match = re.match(r"^blocks\.(\d+)\.", cfg.hook_name)
    meta = {
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_layer": int(match.group(1)) if match else None,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "dataset_path": cfg.dataset_path,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
    }
    out["meta"] = meta
    return out


def save_saelens(
    params: SAEParams,
    cfg: SAEConfig,
    path: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and, if given, ``metrics.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params, cfg = fold_norm_scaling_factor(params, cfg)

    dtype = numpy_dtype(cfg.dtype)
    state = {}
    for name, value in params.to_dict().items():
        if name == "threshold" and cfg.architecture in ("relu", "topk"):
            continue  # SAELens' standard and topk SAEs have no threshold tensor
        state[name] = np.ascontiguousarray(np.asarray(value).astype(dtype))
    safetensors.numpy.save_file(state, str(path / WEIGHTS_FILENAME))
    (path / CFG_FILENAME).write_text(json.dumps(saelens_cfg_dict(cfg), indent=2) + "\n")
    if metrics is not None:
        (path / METRICS_FILENAME).write_text(json.dumps(dict(metrics), indent=2) + "\n")
    logger.info("saved %s SAE to %s", cfg.architecture, path)
    return path


def load_sae(
    path: str | Path,
    *,
    dtype: str | None = None,
    layer: int | None = None,
    hook_name: str | None = None,
) -> tuple[SAEParams, SAEConfig]:
    """Load an SAE from a local path, detecting the format from the files present.

    ``cfg.json`` means SAELens, ``hyperparams.json`` Llama Scope, and ``params.npz`` (or a
    path to that file) Gemma Scope; ``layer``/``hook_name`` are used for Gemma Scope only.
    """
    from sae.scope_formats import load_gemma_scope, load_llama_scope

    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_gemma_scope(path, layer=layer, hook_name=hook_name, dtype=dtype)
    if (path / CFG_FILENAME).is_file():
        return load_saelens(path, dtype=dtype)
    if (path / "hyperparams.json").is_file():
        return load_llama_scope(path, dtype=dtype)
    if (path / "params.npz").is_file():
        return load_gemma_scope(path, layer=layer, hook_name=hook_name, dtype=dtype)
    raise FileNotFoundError(
        f"{path}: no SAE found; expected cfg.json (SAELens), hyperparams.json (Llama Scope) "
        "or params.npz (Gemma Scope)"
    )
