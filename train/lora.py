"""LoRA adapters kept as a separate pytree and applied functionally.

For each adapted linear layer with kernel ``W [in, out]`` the adapter contains ``A [in, r]``
(normal init, std ``1 / sqrt(in)`` unless set) and ``B [r, out]`` (zeros), and the layer
uses ``W_eff = W + (alpha / r) * A @ B``. Because ``B`` starts at zero, the adapted model
equals the base model at step 0.

Why a separate pytree applied before the forward, rather than an NNX wrapper module: the
model code (``models/``) stays untouched and shared with scoring and generation; the
optimizer and checkpoints see only the adapter tree, so the frozen base weights need no
gradient, Adam state or checkpoint space; and merging for export is the same function the
train step runs. The cost is one ``in x out`` product per adapted matrix per step, which
is small next to the forward and backward passes over a batch of tokens.

On disk (``save_lora``): ``adapter_config.json`` with rank, alpha and target modules, and
``adapter.safetensors`` with ``<param path>.lora_a`` / ``<param path>.lora_b`` tensors in
our ``[in, r]`` / ``[r, out]`` layout.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train.params import Params

logger = logging.getLogger(__name__)

Adapters = dict[str, dict[str, jax.Array]]  # kernel path -> {"a": [in, r], "b": [r, out]}

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scale and target layers of a set of adapters."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def target_paths(params: Mapping[str, Any], target_modules: Sequence[str]) -> list[str]:
    """Return the kernel paths whose layer name is in ``target_modules``, in sorted order.

    A kernel path looks like ``layers.3.self_attn.q_proj.kernel``; its layer name is
    ``q_proj``. Raises ValueError for a target that matches no kernel.
    """
    kernels = [p for p in params if p.endswith(".kernel") and params[p].ndim == 2]
    names = {p.split(".")[-2] for p in kernels}
    unknown = sorted(set(target_modules) - names)
    if unknown:
        raise ValueError(
            f"LoRA target modules {unknown} match no linear layer of this model; "
            f"available: {sorted(names)}"
        )
    targets = set(target_modules)
    return sorted(p for p in kernels if p.split(".")[-2] in targets)


def init_lora(
    params: Mapping[str, jax.Array],
    spec: LoraSpec,
    key: jax.Array,
    *,
    init_std: float | None = None,
    dtype: Any = jnp.float32,
) -> Adapters:
    """Create adapters for every target kernel: A normal, B zero."""
    adapters: Adapters = {}
    paths = target_paths(params, spec.target_modules)
    for path, sub in zip(paths, jax.random.split(key, len(paths)), strict=True):
        d_in, d_out = params[path].shape
        std = init_std if init_std is not None else 1.0 / math.sqrt(d_in)
        adapters[path] = {
            "a": (jax.random.normal(sub, (d_in, spec.rank), jnp.float32) * std).astype(dtype),
            "b": jnp.zeros((spec.rank, d_out), dtype),
        }
    n = sum(a["a"].size + a["b"].size for a in adapters.values())
    logger.info("LoRA: rank %d on %d matrices, %d trainable parameters", spec.rank, len(paths), n)
    return adapters


def apply_lora(params: Mapping[str, jax.Array], adapters: Adapters, scale: float) -> Params:
    """Return params with ``W + scale * A @ B`` on every adapted kernel.

    The product is computed in float32 and cast to the kernel's dtype.
    """
    out = dict(params)
    for path, ab in adapters.items():
        if path not in params:
            raise KeyError(f"adapter for {path!r} has no matching parameter in the model")
        w = params[path]
        delta = jnp.asarray(ab["a"], jnp.float32) @ jnp.asarray(ab["b"], jnp.float32)
        out[path] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return out


merge_lora = jax.jit(apply_lora, static_argnames="scale")
"""Jitted ``apply_lora``: the base params with the adapters folded in, for export."""


def save_lora(directory: str | Path, adapters: Adapters, spec: LoraSpec) -> Path:
    """Write ``adapter_config.json`` and ``adapter.safetensors`` to ``directory``."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, ab in adapters.items():
        tensors[f"{path}.lora_a"] = np.asarray(ab["a"], np.float32)
        tensors[f"{path}.lora_b"] = np.asarray(ab["b"], np.float32)
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {"rank": spec.rank, "alpha": spec.alpha, "target_modules": list(spec.target_modules)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    logger.info("saved %d LoRA adapters to %s", len(adapters), directory)
    return directory


def load_lora(directory: str | Path) -> tuple[Adapters, LoraSpec]:
    """Read adapters written by ``save_lora``."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory}: no {name}; is this a directory from save_lora?")
    config = json.loads((directory / CONFIG_FILE).read_text())
    spec = LoraSpec(int(config["rank"]), float(config["alpha"]), tuple(config["target_modules"]))
    adapters: Adapters = {}
    for key, value in load_file(str(directory / WEIGHTS_FILE)).items():
        path, _, part = key.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise ValueError(f"{directory / WEIGHTS_FILE}: unexpected tensor {key!r}")
        adapters.setdefault(path, {})[part[-1]] = jnp.asarray(value)
    incomplete = sorted(p for p, ab in adapters.items() if set(ab) != {"a", "b"})
    if incomplete:
        raise ValueError(f"{directory / WEIGHTS_FILE}: adapters missing A or B for {incomplete}")
    return adapters, spec
