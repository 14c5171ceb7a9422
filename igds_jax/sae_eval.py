"""Held-out quality of an SAE: L0, FVU, dead features and the spliced-in loss increase.

- ``l0``: mean number of active features per token.
- ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  over all held-out tokens (the mean is taken over the same tokens).
- ``dead_fraction``: fraction of features active on none of the held-out tokens. It
  depends on how many tokens are scored, so ``tokens`` is reported with it.
- spliced loss: the model's mean next-token loss on held-out documents with and without
  the SAE reconstruction replacing the activation at the SAE's hook. The BOS position
  keeps its own activation, as it was never part of the SAE's training data.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from igds_jax.activations import spliced_loss
from models.loading import LoadedModel
from sae.config import SAEConfig
from sae.core import decode, encode, input_scale
from sae.interventions import sae_splice_intervention
from sae.params import SAEParams

logger = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames="cfg")
def _chunk_stats(params: SAEParams, cfg: SAEConfig, x_nd: jax.Array):
    f_nf = encode(params, cfg, x_nd)
    x_hat_nd = decode(params, cfg, f_nf, scale_n1=input_scale(cfg, x_nd)).astype(jnp.float32)
    active_nf = f_nf > 0
    err = jnp.sum((x_nd - x_hat_nd) ** 2)
    return err, jnp.sum(active_nf), jnp.any(active_nf, axis=0)


def heldout_metrics(
    params: SAEParams,
    cfg: SAEConfig,
    acts: Iterable[np.ndarray],
    *,
    chunk: int = 2048,
    progress: bool = True,
) -> dict[str, float]:
    """Measure L0, FVU and the dead fraction of the SAE on ``[n, d_in]`` activation arrays."""
    n = 0
    err = active = 0.0
    sum_d = None
    sum_sq = 0.0
    fired_f = np.zeros(cfg.d_sae, bool)

    bar = tqdm(unit="tok", unit_scale=True, disable=not progress, desc="SAE eval")
    for array in acts:
        array = np.asarray(array, np.float32)
        for i in range(0, len(array), chunk):
            x_nd = array[i : i + chunk]
            e, a, fired = _chunk_stats(params, cfg, jnp.asarray(x_nd))
            err += float(e)
            active += float(a)
            fired_f |= np.asarray(fired)

            x64 = x_nd.astype(np.float64)
            sum_d = x64.sum(0) if sum_d is None else sum_d + x64.sum(0)
            sum_sq += float((x64**2).sum())
            n += len(x_nd)
            bar.update(len(x_nd))
    bar.close()

    if n == 0:
        raise ValueError("no held-out activations to evaluate the SAE on; add eval documents")
    total_var = sum_sq - float(sum_d @ sum_d) / n
    return {
        "l0": active / n,
        "fvu": err / max(total_var, 1e-12),
        "mse_per_token": err / n,
        "dead_fraction": float(1.0 - fired_f.mean()),
        "dead_features": int((~fired_f).sum()),
        "tokens": n,
    }


def skip_first_position(intervention):
    """Wrap a two-argument intervention so that it leaves position 0 (BOS) unchanged."""

    def wrapped(h_btd: jax.Array, token_mask_bt: jax.Array) -> jax.Array:
        return intervention(h_btd, token_mask_bt.at[:, 0].set(0))

    wrapped.__name__ = f"{getattr(intervention, '__name__', 'intervention')}_after_bos"
    return wrapped


def spliced_loss_metrics(
    model: LoadedModel,
    params: SAEParams,
    cfg: SAEConfig,
    texts: Sequence[str],
    *,
    seq_len: int,
    batch_size: int = 8,
    keep_bos: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Measure the mean next-token loss on ``texts`` with and without the SAE spliced in.

    Pass ``keep_bos`` when every text starts with BOS, so that position 0 keeps its own
    activation.
    """
    splice = sae_splice_intervention(params, cfg)
    if keep_bos:
        splice = skip_first_position(splice)
    total = total_spliced = 0.0
    count = 0
    start = time.perf_counter()
    bar = tqdm(total=len(texts), unit="doc", disable=not progress, desc="spliced loss")
    for i in range(0, len(texts), batch_size):
        part = list(texts[i : i + batch_size])
        result = spliced_loss(
            model, part, cfg.hook_name, splice, seq_len=seq_len, batch_size=batch_size
        )
        total += result["loss"] * result["tokens"]
        total_spliced += result["loss_spliced"] * result["tokens"]
        count += result["tokens"]
        bar.update(len(part))
        bar.set_postfix(tok_s=f"{count / max(time.perf_counter() - start, 1e-9):.0f}")
    bar.close()
    if count == 0:
        raise ValueError("no held-out tokens to measure the spliced loss on")
    loss, loss_spliced = total / count, total_spliced / count
    return {
        "loss": loss,
        "loss_spliced": loss_spliced,
        "loss_increase": loss_spliced - loss,
        "tokens": count,
    }
