"""SAE weights as a JAX pytree, and the checks every loader runs on them.

Layout (the SAELens convention): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]``. ``threshold`` is the
JumpReLU threshold, or BatchTopK's learned global threshold repeated per feature; ReLU and
TopK SAEs carry zeros there so every SAE has the same pytree structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sae.config import SAEConfig, numpy_dtype

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SAEParams:
    """SAE weights; every field is an array and a pytree leaf."""

    W_enc: jax.Array  # [d_in, d_sae]
    b_enc: jax.Array  # [d_sae]
    W_dec: jax.Array  # [d_sae, d_in]
    b_dec: jax.Array  # [d_in]
    threshold: jax.Array  # [d_sae]

    def to_dict(self) -> dict[str, jax.Array]:
        """Return the weights keyed by their SAELens names."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def replace(self, **changes: Any) -> SAEParams:
        """Return a copy with some arrays replaced."""
        return dataclasses.replace(self, **changes)


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each parameter for ``cfg``."""
    return {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
        "threshold": (cfg.d_sae,),
    }


def params_from_arrays(
    arrays: Mapping[str, Any], cfg: SAEConfig, source: str, *, device: bool = True
) -> SAEParams:
    """Validate raw arrays against ``cfg`` and build ``SAEParams`` in ``cfg.dtype``.

    ``arrays`` must hold W_enc, b_enc, W_dec and b_dec; ``threshold`` is required for
    JumpReLU and BatchTopK, and set to zeros for ReLU and TopK. ``source`` (a file path) is
    named in every error. Raises ValueError on a missing array, a wrong shape or a
    non-finite value.
    """
    shapes = expected_shapes(cfg)
    needed = list(PARAM_NAMES)
    if cfg.architecture in ("relu", "topk"):
        needed.remove("threshold")
    for name in needed:
        if name not in arrays:
            raise ValueError(
                f"{source}: missing weight {name!r} for a {cfg.architecture} SAE "
                f"(found {sorted(arrays)})"
            )

    dtype = numpy_dtype(cfg.dtype)
    out = {}
    for name, shape in shapes.items():
        if name in needed:
            value = np.asarray(arrays[name])
        else:
            value = np.zeros(shape, np.float32)  # unused by relu and topk
        if value.shape != shape:
            raise ValueError(
                f"{source}: weight {name!r} has shape {value.shape}, expected {shape} for "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            )
        value32 = value.astype(np.float32)
        if not np.isfinite(value32).all():
            bad = int((~np.isfinite(value32)).sum())
            raise ValueError(f"{source}: weight {name!r} has {bad} non-finite values (NaN/inf)")
        value = value.astype(dtype)
        out[name] = jnp.asarray(value) if device else value
    return SAEParams(**out)
