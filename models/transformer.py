"""The shared decoder and its pure forward function.

Every family (Llama 3.x/SmolLM2, Qwen3, Gemma-2, Gemma-3, GPT-2) is this module with a
different :class:`~models.config.ModelConfig`. The model runs functionally: split it once
with ``nnx.split`` and call :func:`forward` on ``(graphdef, state)``.

Contract of :func:`forward`:

- ``tokens_bt`` int32 ``[B, T]``; ``attention_mask_bt`` ``[B, T]``, 1 on real tokens. Left
  and right padding both work; positions default to ``cumsum(mask) - 1``, so a left-padded
  row gets the same positions as the unpadded sequence.
- ``capture``: hook names (see ``models/hooks.py``) whose activations come back.
- ``interventions``: ``{hook_name: fn}``, applied in place at that hook.
- ``stop_at_layer=L`` runs blocks ``0..L-1`` only and returns ``None`` logits, as in
  TransformerLens; blocks after the last hook a caller reads are never computed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.hooks import HookContext, Intervention, parse_hook_name
from models.layers import MLP, Attention, Norm


class Embedding(nnx.Module):
    def __init__(self, n: int, d: int, *, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (n, d), dtype) * 0.02)

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], tokens_bt, axis=0)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        self.layer = layer
        norm = functools.partial(
            Norm, cfg.d_model, kind=cfg.norm_type, eps=cfg.norm_eps, dtype=dtype
        )
        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        # Llama: pre-MLP norm. Gemma: norm of the attention output.
        self.post_attention_layernorm = norm()
        self.sandwich = cfg.sandwich_norm
        if cfg.sandwich_norm:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        else:
            self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x_btd, positions_bt, key_valid_bs, slot_start, cache, hook: HookContext):
        prefix = f"blocks.{self.layer}."
        x_btd = hook(prefix + "hook_resid_pre", x_btd)

        # attention.
        attn_btd, cache = self.self_attn(
            self.input_layernorm(x_btd), positions_bt, key_valid_bs, slot_start, cache
        )
        if self.sandwich:
            attn_btd = self.post_attention_layernorm(attn_btd)
        attn_btd = hook(prefix + "hook_attn_out", attn_btd)
        x_btd = x_btd + attn_btd

        # mlp.
        if self.sandwich:
            mlp_btd = self.post_feedforward_layernorm(
                self.mlp(self.pre_feedforward_layernorm(x_btd))
            )
        else:
            mlp_btd = self.mlp(self.post_attention_layernorm(x_btd))
        mlp_btd = hook(prefix + "hook_mlp_out", mlp_btd)
        x_btd = x_btd + mlp_btd

        return hook(prefix + "hook_resid_post", x_btd), cache


class DecoderLM(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        if cfg.learned_positions:
            self.embed_positions = Embedding(cfg.max_positions, cfg.d_model, dtype=dtype, rngs=rngs)
        else:
            self.embed_positions = None
        self.layers = nnx.List([Block(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = Norm(cfg.d_model, kind=cfg.norm_type, eps=cfg.norm_eps, dtype=dtype)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Embedding(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)

    def embed(self, tokens_bt: jax.Array, positions_bt: jax.Array) -> jax.Array:
        cfg = self.config
        x_btd = self.embed_tokens(tokens_bt)
        if cfg.embed_scale:
            # Gemma rounds the scale to the compute dtype first.
            x_btd = x_btd * jnp.asarray(math.sqrt(cfg.d_model), x_btd.dtype)
        if self.embed_positions is not None:
            x_btd = x_btd + self.embed_positions(positions_bt)
        return x_btd

    def unembed(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        logits_btv = jnp.einsum(
            "BTD,VD->BTV", self.norm(x_btd), head.weight[...].astype(x_btd.dtype)
        ).astype(jnp.float32)
        if cfg.final_softcap is not None:
            logits_btv = cfg.final_softcap * jnp.tanh(logits_btv / cfg.final_softcap)
        return logits_btv

    def run(self, tokens_bt, positions_bt, key_valid_bs, slot_start, caches, hook, n_blocks):
        """Embed, run the first ``n_blocks`` blocks; returns residual and updated caches."""
        x_btd = hook("hook_embed", self.embed(tokens_bt, positions_bt))
        return self.run_blocks(
            x_btd, positions_bt, key_valid_bs, slot_start, caches, hook, 0, n_blocks
        )

    def run_blocks(self, x_btd, positions_bt, key_valid_bs, slot_start, caches, hook, start, stop):
        """Run blocks ``start..stop-1`` on the residual ``x_btd`` entering block ``start``."""
        new_caches = []
        for i in range(start, stop):
            cache = None if caches is None else caches[i]
            x_btd, cache = self.layers[i](
                x_btd, positions_bt, key_valid_bs, slot_start, cache, hook
            )
            new_caches.append(cache)
        return x_btd, (None if caches is None else new_caches)


def default_positions(attention_mask_bt: jax.Array) -> jax.Array:
    """Position of each token counting only real tokens (0 on leading padding)."""
    return jnp.maximum(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=1) - 1, 0)


def _freeze_interventions(interventions: Mapping[str, Intervention] | None):
    return tuple(sorted((interventions or {}).items(), key=lambda kv: kv[0]))


def check_hooks(cfg: ModelConfig, names: Iterable[str], stop_at_layer: int | None) -> None:
    """Raise ValueError for an unknown hook or one past ``stop_at_layer``."""
    if stop_at_layer is not None and not 0 <= stop_at_layer <= cfg.n_layers:
        raise ValueError(f"stop_at_layer={stop_at_layer} is outside 0..{cfg.n_layers}")
    for name in names:
        layer, _ = parse_hook_name(name, cfg.n_layers)
        if stop_at_layer is not None and layer is not None and layer >= stop_at_layer:
            raise ValueError(
                f"hook {name!r} is in a block that stop_at_layer={stop_at_layer} "
                f"skips; use stop_at_layer={layer + 1} or later"
            )


def _call_args(cfg, capture, interventions, stop_at_layer, attention_mask_bt, positions_bt):
    """Check the hooks and return the static hook arguments, the int32 mask and positions."""
    capture = tuple(sorted(set(capture)))
    frozen = _freeze_interventions(interventions)
    check_hooks(cfg, list(capture) + [name for name, _ in frozen], stop_at_layer)
    attention_mask_bt = jnp.asarray(attention_mask_bt, jnp.int32)
    if positions_bt is None:
        positions_bt = default_positions(attention_mask_bt)
    return capture, frozen, attention_mask_bt, jnp.asarray(positions_bt, jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "capture", "interventions", "stop_at_layer")
)
def _forward(
    graphdef,
    state,
    tokens_bt,
    attention_mask_bt,
    positions_bt,
    intervention_params,
    *,
    capture,
    interventions,
    stop_at_layer,
):
    model = nnx.merge(graphdef, state)
    cfg = model.config
    hook = HookContext(
        frozenset(capture), dict(interventions), intervention_params, attention_mask_bt
    )
    n_blocks = cfg.n_layers if stop_at_layer is None else stop_at_layer
    x_btd, _ = model.run(tokens_bt, positions_bt, attention_mask_bt, 0, None, hook, n_blocks)
    logits = None if stop_at_layer is not None else model.unembed(x_btd)
    return logits, hook.captured


def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens_bt: jax.Array,
    attention_mask_bt: jax.Array | None = None,
    *,
    capture: Iterable[str] = (),
    interventions: Mapping[str, Intervention] | None = None,
    intervention_params: Mapping[str, Any] | None = None,
    stop_at_layer: int | None = None,
    positions_bt: jax.Array | None = None,
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Run the model; returns ``(logits_btv or None, {hook_name: activation})``.

    Logits are float32 whatever the parameter dtype.
    """
    cfg = graphdef_config(graphdef, state)
    tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
    if attention_mask_bt is None:
        attention_mask_bt = jnp.ones_like(tokens_bt)
    capture, frozen, attention_mask_bt, positions_bt = _call_args(
        cfg, capture, interventions, stop_at_layer, attention_mask_bt, positions_bt
    )
    return _forward(
        graphdef,
        state,
        tokens_bt,
        attention_mask_bt,
        positions_bt,
        dict(intervention_params or {}),
        capture=capture,
        interventions=frozen,
        stop_at_layer=stop_at_layer,
    )


def forward_from(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    x_btd: jax.Array,
    start_layer: int,
    attention_mask_bt: jax.Array,
    *,
    capture: Iterable[str] = (),
    interventions: Mapping[str, Intervention] | None = None,
    intervention_params: Mapping[str, Any] | None = None,
    positions_bt: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Finish a forward pass from the residual stream ``x_btd`` entering ``start_layer``.

    ``x_btd`` is what ``blocks.{start_layer}.hook_resid_pre`` reads (equal to
    ``blocks.{start_layer - 1}.hook_resid_post``). The result is ``forward``'s for the
    same tokens, so a prefix computed once can be finished many times, e.g. with
    different edits at the hook where the prefix stops. Hooks must be in blocks
    ``start_layer`` and later.
    """
    cfg = graphdef_config(graphdef, state)
    if not 0 <= start_layer <= cfg.n_layers:
        raise ValueError(f"start_layer={start_layer} is outside 0..{cfg.n_layers}")
    capture, frozen, attention_mask_bt, positions_bt = _call_args(
        cfg, capture, interventions, None, attention_mask_bt, positions_bt
    )
    for name in list(capture) + [name for name, _ in frozen]:
        layer, _ = parse_hook_name(name, cfg.n_layers)
        if layer is None or layer < start_layer:
            raise ValueError(
                f"hook {name!r} comes before start_layer={start_layer}; apply it to the "
                "prefix instead"
            )
    return _forward_from(
        graphdef,
        state,
        x_btd,
        attention_mask_bt,
        positions_bt,
        dict(intervention_params or {}),
        start_layer=start_layer,
        capture=capture,
        interventions=frozen,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "start_layer", "capture", "interventions"))
def _forward_from(
    graphdef,
    state,
    x_btd,
    attention_mask_bt,
    positions_bt,
    intervention_params,
    *,
    start_layer,
    capture,
    interventions,
):
    model = nnx.merge(graphdef, state)
    hook = HookContext(
        frozenset(capture), dict(interventions), intervention_params, attention_mask_bt
    )
    x_btd, _ = model.run_blocks(
        x_btd, positions_bt, attention_mask_bt, 0, None, hook, start_layer, model.config.n_layers
    )
    return model.unembed(x_btd), hook.captured


_CONFIGS: dict[nnx.GraphDef, ModelConfig] = {}


def graphdef_config(graphdef: nnx.GraphDef, state: nnx.State) -> ModelConfig:
    """The ModelConfig stored in a DecoderLM graphdef (merged once, then cached)."""
    cfg = _CONFIGS.get(graphdef)
    if cfg is None:
        cfg = _CONFIGS[graphdef] = nnx.merge(graphdef, state).config
    return cfg


def token_losses(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
    """Next-token cross-entropy ``[B, T]``: entry t is the loss of predicting token t from
    the prefix before it (entry 0 is 0)."""
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(nll, ((0, 0), (1, 0)))
