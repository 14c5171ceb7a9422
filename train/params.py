"""Model parameters as a flat ``{dotted path: array}`` dict, and back to an ``nnx.State``.

Training, LoRA, checkpoints and export all work on the flat dict: its keys are the same
dotted paths the weight-loading key tables use (``layers.0.self_attn.q_proj.kernel``), it is
a plain pytree for Optax and Orbax, and a path names one tensor unambiguously.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Params = dict[str, jax.Array]


def path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def flatten_state(state: nnx.State) -> Params:
    """Return ``{dotted path: value}`` for every variable of ``state``."""
    return {path_name(path): var.get_value() for path, var in nnx.to_flat_state(state)}


def unflatten_state(template: nnx.State, params: Mapping[str, Any]) -> nnx.State:
    """Rebuild a state shaped like ``template`` whose variables hold ``params``.

    Works inside ``jax.jit``: only the tree structure of ``template`` is used.
    """
    flat = []
    for path, var in nnx.to_flat_state(template):
        name = path_name(path)
        if name not in params:
            raise KeyError(f"parameter {name!r} is missing from the flat params")
        flat.append((path, var.replace(params[name])))
    return nnx.from_flat_state(flat)


def cast_params(params: Mapping[str, jax.Array], dtype: Any) -> Params:
    """Cast floating-point parameters to ``dtype``; other arrays are left alone."""
    return {
        name: value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value
        for name, value in params.items()
    }


def count_params(params: Mapping[str, Any]) -> int:
    return int(sum(value.size for value in params.values()))
