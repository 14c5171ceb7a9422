"""Batched KV-cache generation: greedy or temperature/top-p sampling, stopping at EOS.

Prompts are left-aligned into a cache of ``prompt_len + max_new_tokens`` slots (a
right-padded batch is re-packed to left padding first), the prompt is run once (prefill),
then one token per step inside a ``lax.while_loop`` that ends when every row has emitted an
EOS token or the budget is spent. Interventions apply at every step, prompt included.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.hooks import HookContext, Intervention
from models.transformer import check_hooks, default_positions, graphdef_config


@dataclass
class GenerationOutput:
    tokens: np.ndarray  # [B, max_new_tokens], pad_token_id after each row's end
    lengths: np.ndarray  # [B] generated tokens per row, the EOS token included
    finished: np.ndarray  # [B] True where the row emitted an EOS token


def left_pad(
    tokens_bt: np.ndarray, mask_bt: np.ndarray, pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move every row's real tokens to the right end (left padding)."""
    tokens_bt, mask_bt = np.asarray(tokens_bt), np.asarray(mask_bt).astype(bool)
    out_tokens = np.full_like(tokens_bt, pad_token_id)
    out_mask = np.zeros(tokens_bt.shape, np.int32)
    t = tokens_bt.shape[1]
    for r in range(tokens_bt.shape[0]):
        row = tokens_bt[r][mask_bt[r]]
        out_tokens[r, t - len(row) :] = row
        out_mask[r, t - len(row) :] = 1
    return out_tokens, out_mask


def _sample(logits_bv, key, temperature, top_p, do_sample: bool):
    if not do_sample:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv / temperature
    # top-p: drop the tail whose cumulative probability is past top_p (keep at least one).
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    cum_bv = jnp.cumsum(jax.nn.softmax(sorted_bv, axis=-1), axis=-1)
    cutoff_idx = jnp.sum(cum_bv - jax.nn.softmax(sorted_bv, axis=-1) < top_p, axis=-1) - 1
    cutoff_b = jnp.take_along_axis(sorted_bv, cutoff_idx[:, None], axis=-1)
    logits_bv = jnp.where(logits_bv < cutoff_b, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "interventions", "do_sample")
)
def _generate(
    graphdef,
    state,
    tokens_bt,
    mask_bt,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    key,
    intervention_params,
    *,
    max_new_tokens,
    interventions,
    do_sample,
):
    model = nnx.merge(graphdef, state)
    cfg = model.config
    b, p = tokens_bt.shape
    s = p + max_new_tokens
    dtype = model.embed_tokens.weight[...].dtype
    shape = (b, s, cfg.n_kv_heads, cfg.head_dim)
    caches = [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]
    key_valid_bs = jnp.zeros((b, s), jnp.int32).at[:, :p].set(mask_bt)
    positions_bt = default_positions(mask_bt)

    def step_logits(tok_bt, pos_bt, valid_bs, slot, caches, token_mask_bt):
        hook = HookContext(frozenset(), dict(interventions), intervention_params, token_mask_bt)
        x_btd, caches = model.run(tok_bt, pos_bt, valid_bs, slot, caches, hook, cfg.n_layers)
        return model.unembed(x_btd[:, -1:])[:, 0], caches

    logits_bv, caches = step_logits(tokens_bt, positions_bt, key_valid_bs, 0, caches, mask_bt)
    last_pos_b = positions_bt[:, -1]
    out_bn = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    done_b = jnp.zeros((b,), bool)
    lengths_b = jnp.zeros((b,), jnp.int32)

    def cond(carry):
        i, _, _, _, _, done_b, _, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done_b)

    def body(carry):
        i, logits_bv, caches, valid_bs, pos_b, done_b, out_bn, lengths_b, key = carry
        key, sub = jax.random.split(key)
        tok_b = _sample(logits_bv, sub, temperature, top_p, do_sample)
        tok_b = jnp.where(done_b, pad_id, tok_b)
        out_bn = out_bn.at[:, i].set(tok_b)
        lengths_b = lengths_b + (~done_b).astype(jnp.int32)
        done_b = done_b | jnp.isin(tok_b, eos_ids)
        # feed the new token at slot p + i.
        slot = p + i
        valid_bs = valid_bs.at[:, slot].set(1)
        pos_b = pos_b + 1
        logits_bv, caches = step_logits(
            tok_b[:, None], pos_b[:, None], valid_bs, slot, caches, jnp.ones((b, 1), jnp.int32)
        )
        return i + 1, logits_bv, caches, valid_bs, pos_b, done_b, out_bn, lengths_b, key

    carry = (0, logits_bv, caches, key_valid_bs, last_pos_b, done_b, out_bn, lengths_b, key)
    _, _, _, _, _, done_b, out_bn, lengths_b, _ = jax.lax.while_loop(cond, body, carry)
    return out_bn, lengths_b, done_b


def generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens_bt: np.ndarray,
    attention_mask_bt: np.ndarray | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_ids: tuple[int, ...] | None = None,
    pad_token_id: int | None = None,
    seed: int = 0,
    interventions: Mapping[str, Intervention] | None = None,
    intervention_params: Mapping[str, Any] | None = None,
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` per row; ``temperature=0`` is greedy.

    ``eos_token_ids`` and ``pad_token_id`` default to the model config's values.
    """
    cfg = graphdef_config(graphdef, state)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; pass at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
    frozen = tuple(sorted((interventions or {}).items(), key=lambda kv: kv[0]))
    check_hooks(cfg, [name for name, _ in frozen], None)
    eos = cfg.eos_token_ids if eos_token_ids is None else tuple(eos_token_ids)
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id or 0)
    tokens_bt = np.asarray(tokens_bt)
    mask_bt = np.ones_like(tokens_bt) if attention_mask_bt is None else attention_mask_bt
    if cfg.learned_positions and tokens_bt.shape[1] + max_new_tokens > cfg.max_positions:
        raise ValueError(
            f"prompt length {tokens_bt.shape[1]} + max_new_tokens "
            f"{max_new_tokens} exceeds the model's {cfg.max_positions} positions"
        )
    tokens_bt, mask_bt = left_pad(tokens_bt, mask_bt, pad)
    out, lengths, done = _generate(
        graphdef,
        state,
        jnp.asarray(tokens_bt, jnp.int32),
        jnp.asarray(mask_bt, jnp.int32),
        jnp.asarray(eos if eos else (-1,), jnp.int32),
        jnp.int32(pad),
        jnp.float32(max(temperature, 1e-6)),
        jnp.float32(top_p),
        jax.random.key(seed),
        dict(intervention_params or {}),
        max_new_tokens=max_new_tokens,
        interventions=frozen,
        do_sample=temperature > 0,
    )
    return GenerationOutput(np.asarray(out), np.asarray(lengths), np.asarray(done))
