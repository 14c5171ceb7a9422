"""Supervised fine-tuning: the response-token loss, the optimizer and the jitted train step.

Loss: the mean next-token cross-entropy over response tokens only. Prompt tokens, padding
and the first position carry zero weight. With gradient accumulation the mean is taken over
every response token of the whole optimizer step (not a mean of per-micro-batch means), so
``grad_accum_steps=k`` gives the same gradient as one batch ``k`` times larger.

Step batches have shape ``[A, B, T]``: ``A`` accumulated micro-batches of ``B`` rows padded
to ``T`` tokens, all from one length bucket (see :mod:`train.batching`). The step scans over
``A``, sums gradients in float32, divides by the step's response-token count, clips,
and applies AdamW. The trainable tree and the optimizer state are donated, so the update
happens in place.

Precision: trainable weights and Adam moments live in ``param_dtype`` (float32 master
weights by default); the forward and backward run on a copy cast to ``compute_dtype``.
Logits and the loss are always float32.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.config import ModelConfig
from models.loading import abstract_model, resolve_dtype
from models.transformer import forward, token_losses
from train.config import OptimConfig
from train.lora import Adapters, apply_lora
from train.params import Params, cast_params, unflatten_state

logger = logging.getLogger(__name__)


def response_loss_sum(
    graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Return (sum of response-token losses, number of response tokens) for one batch.

    ``batch`` contains ``tokens``, ``attention_mask``, ``positions`` (int ``[B, T]``) and
    ``loss_mask`` (float ``[B, T]``, 1 where the token is a response token to predict).
    """
    logits_btv, _ = forward(
        graphdef,
        state,
        batch["tokens"],
        batch["attention_mask"],
        positions_bt=batch["positions"],
    )
    losses_bt = token_losses(logits_btv, batch["tokens"])
    weights_bt = batch["loss_mask"]
    return jnp.sum(losses_bt * weights_bt), jnp.sum(weights_bt)


def learning_rate_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine, linear or constant decay."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}; a run needs at least one step")
    warmup = int(optim.warmup_ratio * total_steps) if optim.warmup_ratio else optim.warmup_steps
    warmup = min(max(warmup, 0), total_steps - 1) if total_steps > 1 else 0
    peak, end = optim.learning_rate, optim.learning_rate * optim.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.min_lr_ratio)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"schedule {optim.schedule!r} is unknown; use cosine, linear or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """True on matrices (ndim >= 2): norms and biases get no weight decay."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """AdamW without its learning rate: optional clipping, Adam scaling, decoupled decay.

    The train step multiplies the result by ``-lr``, which completes ``optax.adamw``
    (``scale_by_adam``, ``add_decayed_weights``, ``scale_by_learning_rate``). Passing the
    rate per step keeps the compiled step independent of the schedule, so runs that differ
    only in length or schedule reuse one compilation.
    """
    parts = []
    if optim.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    if optim.weight_decay:
        parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


@dataclass(frozen=True)
class StepFunctions:
    """The jitted functions of one run, closed over its model structure."""

    tx: optax.GradientTransformation
    train_step: Callable[..., tuple[Any, Any, dict[str, jax.Array]]]
    loss_sums: Callable[..., tuple[jax.Array, jax.Array]]
    full_params: Callable[..., Params]


def make_step_functions(
    graphdef: nnx.GraphDef,
    template: nnx.State,
    tx: optax.GradientTransformation,
    *,
    lora_scale: float | None = None,
    compute_dtype: Any = jnp.float32,
) -> StepFunctions:
    """Build the train step and the held-out loss for one model.

    ``trainable`` is the full flat params (``lora_scale=None``) or the adapters; ``frozen``
    is an empty dict or the base params. Only ``trainable`` gets gradients.

    ``train_step(trainable, opt_state, frozen, batch, lr)`` returns ``(trainable,
    opt_state, stats)`` with ``stats = {loss, grad_norm, tokens}``; its first two arguments
    are donated. ``grad_norm`` is the norm before clipping.
    """

    def full_params(trainable: Params | Adapters, frozen: Params) -> Params:
        if lora_scale is None:
            return dict(trainable)
        return apply_lora(frozen, trainable, lora_scale)

    def micro_loss(trainable, frozen, batch):
        params = cast_params(full_params(trainable, frozen), compute_dtype)
        return response_loss_sum(graphdef, unflatten_state(template, params), batch)

    def train_step(trainable, opt_state, frozen, batch_a, lr):
        n_tokens = jnp.sum(batch_a["loss_mask"])
        grad_fn = jax.value_and_grad(lambda t, b: micro_loss(t, frozen, b)[0])

        def accumulate(carry, batch):
            grad_sum, loss_sum = carry
            loss, grads = grad_fn(trainable, batch)
            grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
            return (grad_sum, loss_sum + loss), None

        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
        (grad_sum, loss_sum), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0.0)), batch_a)
        denom = jnp.maximum(n_tokens, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grad_sum, trainable)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        trainable = optax.apply_updates(trainable, updates)
        stats = {"loss": loss_sum / denom, "grad_norm": grad_norm, "tokens": n_tokens}
        return trainable, opt_state, stats

    def loss_sums(trainable, frozen, batch):
        return micro_loss(trainable, frozen, batch)

    return StepFunctions(
        tx=tx,
        train_step=jax.jit(train_step, donate_argnums=(0, 1)),
        loss_sums=jax.jit(loss_sums),
        full_params=jax.jit(full_params),
    )


@functools.lru_cache(maxsize=8)
def cached_step_functions(
    model_config: ModelConfig,
    param_dtype: str,
    optimizer_key: tuple[float | None, ...],
    lora_scale: float | None,
    compute_dtype: str,
) -> StepFunctions:
    """``make_step_functions`` for a model config, built once per process and settings.

    ``optimizer_key`` is ``optimizer_key(optim)``. Runs that share these arguments (the
    runs of ``igds compare``, a resumed run in the same process) reuse compiled steps.
    """
    graphdef, template = abstract_model(model_config, resolve_dtype(param_dtype))
    b1, b2, eps, weight_decay, clip = optimizer_key
    optim = OptimConfig(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, grad_clip_norm=clip)
    return make_step_functions(
        graphdef,
        template,
        make_optimizer(optim),
        lora_scale=lora_scale,
        compute_dtype=resolve_dtype(compute_dtype),
    )


def optimizer_key(optim: OptimConfig) -> tuple[float | None, ...]:
    """Return the optimizer settings that the compiled step depends on (not the schedule)."""
    return (optim.b1, optim.b2, optim.eps, optim.weight_decay, optim.grad_clip_norm)
