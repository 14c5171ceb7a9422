"""One SAE training step: TopK/BatchTopK loss with AuxK, Adam update, unit-norm decoder.

Loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):

- reconstruction: ``mean_n sum_d (x_hat - x)^2``;
- AuxK: the ``k_aux`` largest pre-activations among dead features reconstruct the
  detached residual ``x - x_hat`` through ``W_dec`` (no bias). A feature is dead when it
  has not fired for ``dead_feature_window`` steps. The term is scaled by
  ``min(n_dead / k_aux, 1) * aux_k_coef``.

BatchTopK keeps the ``k * n`` largest ReLU'd pre-activations of the whole batch. Its
inference threshold is an exponential moving average of the smallest kept activation,
stored in ``params.threshold``.

After each Adam update the decoder rows are renormalized to unit norm; before it, the
gradient component parallel to each row is removed, since it would only change the norm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sae.config import SAEConfig
from sae.core import pre_activations, topk_activation
from sae.params import SAEParams


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """State that the step function updates, saved whole in each checkpoint."""

    params: SAEParams
    opt_state: Any
    step: jax.Array  # int32 scalar
    steps_since_fired: jax.Array  # int32 [d_sae]
    rng_key: jax.Array  # uint32 key data; seeds initialization only


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static hyperparameters of the step function (hashable, for jit)."""

    aux_k: int
    aux_k_coef: float
    dead_feature_window: int
    threshold_lr: float


def batch_topk_activation(pre_nf: jax.Array, k: int) -> jax.Array:
    """Keep the ``k * n`` largest ReLU'd pre-activations over the whole ``[n, f]`` batch."""
    n, f = pre_nf.shape
    acts = jax.nn.relu(pre_nf).reshape(-1)
    values, indices = jax.lax.top_k(acts, int(k * n))
    return jnp.zeros_like(acts).at[indices].set(values).reshape(n, f)


def train_activation(cfg: SAEConfig, pre_nf: jax.Array) -> jax.Array:
    """Sparsifying nonlinearity used in training (batch-wide for BatchTopK)."""
    if cfg.architecture == "batchtopk":
        return batch_topk_activation(pre_nf, int(cfg.k))
    return topk_activation(pre_nf, int(cfg.k))


def unit_norm_rows(w_fd: jax.Array) -> jax.Array:
    return w_fd / jnp.maximum(jnp.linalg.norm(w_fd, axis=-1, keepdims=True), 1e-12)


def init_params(key: jax.Array, cfg: SAEConfig, b_dec_d: np.ndarray) -> SAEParams:
    """Random unit-norm decoder rows, encoder = decoder transposed, zero encoder bias."""
    w_dec = unit_norm_rows(jax.random.normal(key, (cfg.d_sae, cfg.d_in), jnp.float32))
    return SAEParams(
        W_enc=jnp.array(w_dec.T),
        b_enc=jnp.zeros((cfg.d_sae,), jnp.float32),
        W_dec=w_dec,
        b_dec=jnp.asarray(b_dec_d, jnp.float32),
        threshold=jnp.zeros((cfg.d_sae,), jnp.float32),
    )


def _loss(params: SAEParams, x_nd, dead_f, cfg: SAEConfig, settings: StepSettings):
    pre_nf = pre_activations(params, cfg, x_nd)
    f_nf = train_activation(cfg, pre_nf)
    recon_nd = f_nf @ params.W_dec + params.b_dec
    mse = jnp.mean(jnp.sum((recon_nd - x_nd) ** 2, axis=-1))

    # AuxK: the top dead features reconstruct what the live ones missed.
    residual_nd = jax.lax.stop_gradient(x_nd - recon_nd)
    dead_pre_nf = jnp.where(dead_f, pre_nf, -jnp.inf)
    values, indices = jax.lax.top_k(dead_pre_nf, settings.aux_k)
    values = jnp.where(jnp.isfinite(values), values, 0.0)
    aux_f_nf = jnp.put_along_axis(jnp.zeros_like(pre_nf), indices, values, axis=-1, inplace=False)
    aux_mse = jnp.mean(jnp.sum((aux_f_nf @ params.W_dec - residual_nd) ** 2, axis=-1))
    n_dead = jnp.sum(dead_f)
    aux_scale = jnp.minimum(n_dead / settings.aux_k, 1.0)
    aux_loss = settings.aux_k_coef * aux_scale * aux_mse

    total = mse + aux_loss
    return total, (f_nf, recon_nd, mse, aux_loss)


def make_step_fn(cfg: SAEConfig, optimizer: optax.GradientTransformation, settings: StepSettings):
    """Return ``step(state, x_nd) -> (state, metrics)``, jitted, donating ``state``."""

    def step(state: TrainState, x_nd: jax.Array):
        params = state.params
        dead_f = state.steps_since_fired >= settings.dead_feature_window
        grad_fn = jax.value_and_grad(_loss, has_aux=True)
        (loss, (f_nf, recon_nd, mse, aux_loss)), grads = grad_fn(
            params, x_nd, dead_f, cfg, settings
        )

        # Drop the gradient along each decoder row, because it would only change the norm.
        g_dec = grads.W_dec
        g_dec = g_dec - jnp.sum(g_dec * params.W_dec, axis=-1, keepdims=True) * params.W_dec
        grads = grads.replace(W_dec=g_dec, threshold=jnp.zeros_like(grads.threshold))

        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_params = new_params.replace(W_dec=unit_norm_rows(new_params.W_dec))

        fired_nf = f_nf > 0
        if cfg.architecture == "batchtopk":
            smallest = jnp.min(jnp.where(fired_nf, f_nf, jnp.inf))
            old = params.threshold
            ema = (1 - settings.threshold_lr) * old + settings.threshold_lr * smallest
            new_params = new_params.replace(threshold=jnp.where(fired_nf.any(), ema, old))
        else:
            new_params = new_params.replace(threshold=params.threshold)

        since = jnp.where(fired_nf.any(axis=0), 0, state.steps_since_fired + 1)
        since = jnp.minimum(since, 2**30)
        x_centered = x_nd - jnp.mean(x_nd, axis=0)
        metrics = {
            "loss": loss,
            "mse": mse,
            "aux_loss": aux_loss,
            "l0": jnp.mean(jnp.sum(fired_nf, axis=-1)),
            "fvu": jnp.sum((x_nd - recon_nd) ** 2) / jnp.maximum(jnp.sum(x_centered**2), 1e-12),
            "dead_fraction": jnp.mean(since >= settings.dead_feature_window),
        }
        new_state = TrainState(new_params, opt_state, state.step + 1, since, state.rng_key)
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)


def geometric_median(x_nd: np.ndarray, iters: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Geometric median of the rows of ``x`` by Weiszfeld's algorithm (float64)."""
    x = np.asarray(x_nd, np.float64)
    y = x.mean(axis=0)
    for _ in range(iters):
        dist = np.linalg.norm(x - y, axis=1)
        weights = 1.0 / np.maximum(dist, 1e-12)
        y_next = weights @ x / weights.sum()
        moved = np.linalg.norm(y_next - y)
        y = y_next
        if moved <= tol * max(np.linalg.norm(y), 1e-12):
            break
    return y.astype(np.float32)
