"""Plain NumPy SAE formulas and random SAEs, the independent reference for the sae tests."""

from __future__ import annotations

import numpy as np


def random_arrays(d_in: int, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random SAE weights (float32) whose features fire on roughly half of random inputs."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "b_enc": (0.1 * rng.normal(size=d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": (0.2 * rng.normal(size=d_in)).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.6, size=d_sae).astype(np.float32),
    }


def np_scale(x: np.ndarray, normalize: str, factor: float | None) -> np.ndarray:
    """Per-token input multiplier, shape [..., 1]."""
    if normalize == "none":
        return np.ones(x.shape[:-1] + (1,))
    if normalize == "expected_average_only_in":
        return np.full(x.shape[:-1] + (1,), 1.0 if factor is None else factor)
    norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    return np.sqrt(x.shape[-1]) / norm


def np_encode(
    a: dict[str, np.ndarray],
    arch: str,
    x: np.ndarray,
    *,
    k: int | None = None,
    apply_b_dec: bool = True,
    normalize: str = "none",
    factor: float | None = None,
) -> np.ndarray:
    """Feature activations by the formulas, in float64."""
    a = {n: v.astype(np.float64) for n, v in a.items()}
    sae_in = x.astype(np.float64) * np_scale(x, normalize, factor)
    if apply_b_dec:
        sae_in = sae_in - a["b_dec"]
    pre = sae_in @ a["W_enc"] + a["b_enc"]
    if arch in ("relu", "standard"):
        return np.maximum(pre, 0)
    if arch in ("jumprelu", "batchtopk"):
        return np.maximum(pre, 0) * (pre > a["threshold"])
    assert arch == "topk"
    flat = pre.reshape(-1, pre.shape[-1])
    out = np.zeros_like(flat)
    for row in range(flat.shape[0]):
        top = np.argsort(-flat[row])[:k]
        out[row, top] = np.maximum(flat[row, top], 0)
    return out.reshape(pre.shape)


def np_decode(
    a: dict[str, np.ndarray], f: np.ndarray, scale: np.ndarray | float = 1.0
) -> np.ndarray:
    return (f @ a["W_dec"].astype(np.float64) + a["b_dec"].astype(np.float64)) / scale
