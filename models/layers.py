"""Layers shared by every family: linear, norms, rotary embedding, attention, MLP.

Field names mirror the HF modules (``q_proj``, ``gate_proj``, ``input_layernorm``), so a
checkpoint key maps to a parameter path with a short table. Linear kernels are stored
``[in, out]``; HF's ``[out, in]`` weights are transposed on load.

Axes in names: B batch, T query positions, S key slots, D model width, N query heads,
K key/value heads, G query heads per key/value head, H head width, F MLP width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import ModelConfig, RopeConfig

# Queries per block of cache-free attention. In a CPU micro-benchmark (2 cores, 8 x 512
# tokens, 9 heads) blocks of 64 and 128 ran equally fast and 256 was 30% slower.
QUERY_BLOCK = 128


class Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        std = 1.0 / math.sqrt(d_in)
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (d_in, d_out), dtype) * std)
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Norm(nnx.Module):
    """RMSNorm (plain or Gemma's ``1 + w``) or LayerNorm, computed in float32."""

    def __init__(self, dim: int, *, kind: str, eps: float, dtype):
        self.kind = kind
        self.eps = eps
        init = jnp.zeros if kind == "rms_gemma" else jnp.ones
        self.weight = nnx.Param(init((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype)) if kind == "layernorm" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        w32 = self.weight[...].astype(jnp.float32)
        if self.kind == "layernorm":
            mean = x32.mean(-1, keepdims=True)
            var = jnp.square(x32 - mean).mean(-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * w32
            return (y + self.bias[...].astype(jnp.float32)).astype(x.dtype)
        x_hat = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        if self.kind == "rms_gemma":
            return (x_hat * (1.0 + w32)).astype(x.dtype)
        # Llama casts back before the weight multiply.
        return self.weight[...].astype(x.dtype) * x_hat.astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies [H/2] in float64, with the configured scaling applied."""
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if rope.rope_type == "linear":
        return inv / rope.factor
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled)
    return inv


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate halves of each head (the HF ``rotate_half`` layout)."""
    inv = jnp.asarray(inv_freq, jnp.float32)
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    cos = jnp.cos(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    sin = jnp.sin(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    return x_btnh * cos + rotated * sin


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.act = cfg.act
        d, f, b = cfg.d_model, cfg.d_ff, cfg.mlp_bias
        if cfg.gated_mlp:
            self.gate_proj = Linear(d, f, bias=b, dtype=dtype, rngs=rngs)
        else:
            self.gate_proj = None
        self.up_proj = Linear(d, f, bias=b, dtype=dtype, rngs=rngs)
        self.down_proj = Linear(f, d, bias=b, dtype=dtype, rngs=rngs)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        if self.gate_proj is None:
            return self.down_proj(activation(self.act, self.up_proj(x_btd)))
        hidden_btf = activation(self.act, self.gate_proj(x_btd)) * self.up_proj(x_btd)
        return self.down_proj(hidden_btf)


class Attention(nnx.Module):
    """Grouped-query attention over key slots, with optional KV cache."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = n, k, h
        self.q_proj = Linear(d, n * h, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Linear(d, k * h, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Linear(d, k * h, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Linear(n * h, d, bias=cfg.o_bias, dtype=dtype, rngs=rngs)
        if cfg.qk_norm:
            kind = "rms_gemma" if cfg.norm_type == "rms_gemma" else "rms"
            self.q_norm = Norm(h, kind=kind, eps=cfg.norm_eps, dtype=dtype)
            self.k_norm = Norm(h, kind=kind, eps=cfg.norm_eps, dtype=dtype)
        else:
            self.q_norm = self.k_norm = None
        self.sliding = cfg.layer_types[layer] == "sliding"
        self.window = cfg.sliding_window if self.sliding else None
        rope = cfg.rope_local if (self.sliding and cfg.rope_local is not None) else cfg.rope
        # A tuple keeps it static and hashable inside the GraphDef.
        self.inv_freq = None if cfg.learned_positions else tuple(rope_inv_freq(rope, h))
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_softcap

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        key_valid_bs: jax.Array,
        slot_start: jax.Array | int,
        cache: tuple[jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        b, t, _ = x_btd.shape
        q_btnh = self.q_proj(x_btd).reshape(b, t, self.n_heads, self.head_dim)
        k_btkh = self.k_proj(x_btd).reshape(b, t, self.n_kv_heads, self.head_dim)
        v_btkh = self.v_proj(x_btd).reshape(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        if self.inv_freq is not None:
            inv = np.asarray(self.inv_freq)
            q_btnh = apply_rope(q_btnh, positions_bt, inv)
            k_btkh = apply_rope(k_btkh, positions_bt, inv)

        # write this chunk into the cache; without one the keys are just this chunk.
        if cache is None:
            k_bskh, v_bskh, new_cache = k_btkh, v_btkh, None
        else:
            k_cache, v_cache = cache
            k_bskh = jax.lax.dynamic_update_slice_in_dim(k_cache, k_btkh, slot_start, axis=1)
            v_bskh = jax.lax.dynamic_update_slice_in_dim(v_cache, v_btkh, slot_start, axis=1)
            new_cache = (k_bskh, v_bskh)
        s = k_bskh.shape[1]

        # mask in slot space: causal, padding, sliding window.
        q_slot_t = slot_start + jnp.arange(t)
        k_slot_s = jnp.arange(s)
        allowed_ts = k_slot_s[None, :] <= q_slot_t[:, None]
        if self.window is not None:
            allowed_ts &= q_slot_t[:, None] - k_slot_s[None, :] < self.window
        allowed_bts = allowed_ts[None] & key_valid_bs[:, None, :].astype(bool)

        # without a cache, a long sequence goes through causal query blocks (see
        # _blocked_causal); short ones and cached steps take the one-shot path.
        if cache is None and isinstance(slot_start, int) and slot_start == 0 and t > QUERY_BLOCK:
            out_btd = self.o_proj(self._blocked_causal(q_btnh, k_bskh, v_bskh, allowed_bts))
            return out_btd, new_cache

        g = self.n_heads // self.n_kv_heads
        q_btkgh = q_btnh.reshape(b, t, self.n_kv_heads, g, self.head_dim)
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", q_btkgh, k_bskh).astype(jnp.float32)
        scores = scores * self.scale
        if self.softcap is not None:
            scores = self.softcap * jnp.tanh(scores / self.softcap)
        scores = jnp.where(allowed_bts[:, None, None], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_bskh.dtype)
        out_btkgh = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_bskh)
        out_btd = self.o_proj(out_btkgh.reshape(b, t, self.n_heads * self.head_dim))
        return out_btd, new_cache

    def _blocked_causal(self, q_btnh, k_bskh, v_bskh, allowed_bts):
        """Attention of a cache-free sequence in blocks of QUERY_BLOCK queries.

        Query block [start, stop) attends to keys before stop only, so about half of the
        causal score matrix is never computed. Operands are head-major, so both matmuls are
        plain batched matmuls over (B, K). Returns ``[B, T, N * H]``.
        """
        b, t = q_btnh.shape[:2]
        g = self.n_heads // self.n_kv_heads
        q_bkgth = q_btnh.reshape(b, t, self.n_kv_heads, g, self.head_dim).transpose(0, 2, 3, 1, 4)
        k_bksh, v_bksh = k_bskh.transpose(0, 2, 1, 3), v_bskh.transpose(0, 2, 1, 3)
        outs = []
        for start in range(0, t, QUERY_BLOCK):
            stop = min(t, start + QUERY_BLOCK)
            outs.append(
                self._attend(
                    q_bkgth[:, :, :, start:stop],
                    k_bksh[:, :, :stop],
                    v_bksh[:, :, :stop],
                    allowed_bts[:, start:stop, :stop],
                )
            )
        out_bkgth = jnp.concatenate(outs, axis=3)
        return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, self.n_heads * self.head_dim)

    def _attend(self, q_bkgth, k_bksh, v_bksh, allowed_bts):
        scores = jnp.einsum("BKGTH,BKSH->BKGTS", q_bkgth, k_bksh).astype(jnp.float32)
        scores = scores * self.scale
        if self.softcap is not None:
            scores = self.softcap * jnp.tanh(scores / self.softcap)
        scores = jnp.where(allowed_bts[:, None, None], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
        return jnp.einsum("BKGTS,BKSH->BKGTH", probs, v_bksh)
