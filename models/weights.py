"""Filling a model's parameters from checkpoint tensors, one tensor at a time.

A family's key table maps each checkpoint key to the parameter paths it fills and the
transform that turns the stored tensor into each parameter (HF linear weights are
``[out, in]``; ours are ``[in, out]``). Loading fails loudly: a checkpoint key the table
does not know, a parameter no key fills, and a shape mismatch are all errors that name the
key or the path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]
KeyTable = dict[str, list[tuple[str, Transform]]]


class WeightLoadError(ValueError):
    """A checkpoint that does not match the model it is loaded into."""


def identity(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def param_paths(abstract_state: nnx.State) -> dict[str, Any]:
    """``{'layers.0.self_attn.q_proj.kernel': ShapeDtypeStruct}`` for every parameter."""
    return {
        ".".join(str(p) for p in path): var.get_value()
        for path, var in nnx.to_flat_state(abstract_state)
    }


def fill_state(
    abstract_state: nnx.State,
    tensors: Iterable[tuple[str, np.ndarray]],
    table: KeyTable,
    *,
    dtype: Any,
    source: str,
    ignore: Callable[[str], bool] = lambda key: False,
    place: Callable[[str, np.ndarray], jax.Array] | None = None,
) -> nnx.State:
    """Build a concrete state from ``(key, tensor)`` pairs streamed from a checkpoint.

    ``place(path, array)`` puts one parameter on device (for example with a
    NamedSharding); by default it goes to the default device in ``dtype``.
    """
    targets = param_paths(abstract_state)
    filled: dict[str, jax.Array] = {}
    unused: list[str] = []
    n_ignored = 0
    for key, tensor in tensors:
        if key not in table:
            if ignore(key):
                n_ignored += 1
            else:
                unused.append(key)
            continue
        for path, transform in table[key]:
            if path not in targets:
                raise WeightLoadError(
                    f"{source}: key table sends {key!r} to {path!r}, which the model does not have"
                )
            value = np.asarray(transform(tensor))
            want = targets[path].shape
            if tuple(value.shape) != tuple(want):
                raise WeightLoadError(
                    f"{source}: tensor {key!r} gives shape {tuple(value.shape)} for {path!r}, "
                    f"expected {tuple(want)}; the checkpoint does not match its config"
                )
            if place is None:
                filled[path] = jnp.asarray(value, dtype=dtype)
            else:
                filled[path] = place(path, value.astype(jnp.dtype(dtype)))
    if unused:
        shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
        raise WeightLoadError(
            f"{source}: {len(unused)} checkpoint tensors are not used by the model: {shown}"
        )
    missing = sorted(set(targets) - set(filled))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise WeightLoadError(
            f"{source}: {len(missing)} parameters were not filled by any checkpoint tensor: {shown}"
        )
    if n_ignored:
        logger.info("%s: skipped %d tensors that belong to other modules", source, n_ignored)
    flat = [
        (path, var.replace(filled[".".join(str(p) for p in path)]))
        for path, var in nnx.to_flat_state(abstract_state)
    ]
    return nnx.from_flat_state(flat)


def iter_safetensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(key, float32/bfloat16 numpy array)`` one tensor at a time."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            handle = safe_open(file, framework="flax")
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadError(
                f"{file}: cannot read safetensors file ({err}); the file is "
                f"corrupt or not safetensors"
            ) from None
        with handle as f:
            for key in f.keys():
                yield key, np.asarray(f.get_tensor(key).astype(jnp.float32))
