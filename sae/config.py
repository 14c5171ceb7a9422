"""Static SAE configuration: architecture, sizes, hook point and input normalization.

``SAEConfig`` is a frozen, hashable dataclass, so it can be a static argument to
``jax.jit`` while the weights (``SAEParams``) stay dynamic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# Architecture names used inside this package. SAELens calls the ReLU SAE "standard".
ARCHITECTURES = ("jumprelu", "relu", "topk", "batchtopk")
ARCHITECTURE_ALIASES = {"standard": "relu"}

# SAELens option names (SAELens 6.x ``SAEConfig.normalize_activations``); its
# "layer_norm" option is not supported here.
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale")

_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": "bfloat16",
    "float64": np.float64,
}


def canonical_architecture(name: str) -> str:
    """Map an architecture name (including SAELens' "standard") to one of ARCHITECTURES."""
    arch = ARCHITECTURE_ALIASES.get(name, name)
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES + tuple(ARCHITECTURE_ALIASES))
        raise ValueError(f"unknown SAE architecture {name!r}; expected one of {known}")
    return arch


def canonical_dtype(name: str) -> str:
    """Normalize a dtype string such as 'torch.bfloat16' or 'float32' to a short name."""
    short = str(name).removeprefix("torch.")
    if short not in _DTYPES:
        raise ValueError(f"unsupported SAE dtype {name!r}; expected one of {', '.join(_DTYPES)}")
    return short


def numpy_dtype(name: str) -> np.dtype:
    """NumPy dtype for a dtype name; bfloat16 comes from ml_dtypes (a JAX dependency)."""
    short = canonical_dtype(name)
    if short == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[short])


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static description of one SAE; the weights live in ``SAEParams``."""

    # one of ARCHITECTURES ("standard" is accepted and stored as "relu")
    architecture: str
    # width of the activation the SAE reads, and number of features
    d_in: int
    d_sae: int
    # active features per token (topk) or per token on average over a batch (batchtopk)
    k: int | None = None
    # model hook point the SAE reads, e.g. "blocks.14.hook_resid_post"
    hook_name: str = ""
    # subtract b_dec from the input before encoding (SAELens default True)
    apply_b_dec_to_input: bool = True
    # input normalization, one of NORMALIZATIONS
    normalize_activations: str = "none"
    # multiplier for "expected_average_only_in"; None keeps inputs unscaled, as SAELens
    # does when it has no factor for such an SAE
    norm_scaling_factor: float | None = None
    # parameter dtype name
    dtype: str = "float32"
    # provenance only; never used in computation
    model_name: str | None = None
    dataset_path: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", canonical_architecture(self.architecture))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"SAEConfig.{name} must be a positive integer, got {value!r}")
        if self.architecture in ("topk", "batchtopk"):
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(
                    f"SAEConfig.k must be in 1..d_sae={self.d_sae} for architecture "
                    f"{self.architecture!r}, got {self.k!r}"
                )
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"unsupported normalize_activations {self.normalize_activations!r}; expected "
                f"one of {', '.join(NORMALIZATIONS)}"
            )
        factor = self.norm_scaling_factor
        if factor is not None and not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"norm_scaling_factor must be finite and > 0, got {factor!r}")

    def replace(self, **changes: Any) -> SAEConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_hook_dim(cfg: SAEConfig, d_model: int) -> None:
    """Raise ValueError unless the SAE's input width equals the width of its hook point."""
    if cfg.d_in != d_model:
        raise ValueError(
            f"SAE reads {cfg.hook_name or 'its hook'} with d_in={cfg.d_in}, but the model's "
            f"activation there has width {d_model}; load an SAE trained on this model"
        )
