"""FLOP counts of FRS scoring, shared by the CPU and GPU scoring benchmarks."""

from __future__ import annotations

import numpy as np

from models.config import ModelConfig


def scoring_flops(lengths_n: np.ndarray, cfg: ModelConfig, n_blocks: int, n_features: int) -> float:
    """Useful FLOPs of scoring examples of ``lengths_n`` real tokens.

    Counts the q/k/v/o projections and the MLP of the first ``n_blocks`` blocks, causal
    attention (half of each ``T x T`` score matrix, for ``QK^T`` and ``PV``), and the SAE
    encode of ``n_features`` features, all on real tokens only. Padding, norms, RoPE and
    softmax are left out, so compute spent on padding lowers the achieved rate.
    """
    lengths_n = np.asarray(lengths_n, dtype=np.float64)
    d, h = cfg.d_model, cfg.head_dim
    mlp_matrices = 3 if cfg.gated_mlp else 2
    per_token_weights = 2 * d * cfg.n_heads * h + 2 * d * cfg.n_kv_heads * h
    per_token_weights += mlp_matrices * d * cfg.d_ff
    tokens = lengths_n.sum()
    dense = 2.0 * per_token_weights * n_blocks * tokens
    attention = 2.0 * 2.0 * cfg.n_heads * h * n_blocks * (lengths_n**2 / 2).sum()
    return dense + attention + 2.0 * d * n_features * tokens
