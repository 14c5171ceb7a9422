"""Per-example numbers for the Loss and IFD baselines, computed with the base model.

- Loss: the mean cross-entropy of an example's response tokens given everything before
  them (``igds_jax.baselines.loss``).
- IFD: ``loss(response | prompt) / loss(response alone)`` (``igds_jax.baselines.ifd``).

Response-alone rule: the response-alone sequence is ``[BOS] + response ids``. The
response ids are exactly the response tokens of the encoded example, after its
truncation. With a chat template they are the tokens the template renders for the
assistant turn; without one, they are the response text tokenized on its own, plus EOS
when ``append_eos``. Both losses therefore average over the same target tokens. Without a
BOS token, the first response token has no context and is left out of the response-alone
average.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from igds_jax.baselines.loss import mean_masked_loss
from igds_jax.method_batches import make_batches, progress
from models.transformer import forward, token_losses
from train.tokenize import EncodedExample

logger = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def token_loss_batch(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens_bt: jax.Array,
    attention_mask_bt: jax.Array,
    positions_bt: jax.Array,
) -> jax.Array:
    """Return the next-token cross-entropy ``[B, T]`` (entry t: loss of token t)."""
    logits_btv, _ = forward(
        graphdef, state, tokens_bt, attention_mask_bt, positions_bt=positions_bt
    )
    return token_losses(logits_btv, tokens_bt)


def mean_response_losses(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    examples: Sequence[EncodedExample],
    *,
    tokens_per_batch: int = 8192,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
    desc: str = "loss",
) -> np.ndarray:
    """Return ``[n]`` float64 mean response-token losses; NaN for an example without any."""
    batches = make_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    out = np.full(len(examples), np.nan)
    for batch in progress(batches, desc):
        loss_bt = np.asarray(
            token_loss_batch(
                graphdef, state, batch.tokens_bt, batch.attention_mask_bt, batch.positions_bt
            )
        )
        mask_bt = batch.response_mask_bt
        rows = (batch.example_idx_b >= 0) & mask_bt.any(axis=1)
        out[batch.example_idx_b[rows]] = mean_masked_loss(loss_bt[rows], mask_bt[rows])
    return out


def response_alone(example: EncodedExample, bos_token_id: int | None) -> EncodedExample:
    """Return ``[BOS] + response ids`` of an encoded example (rule in the module docstring)."""
    response_ids = example.input_ids[example.num_prompt_tokens :]
    if bos_token_id is None:
        ids = response_ids.copy()
        response_mask = np.ones(ids.shape, bool)
        response_mask[0] = False  # no context to predict it from
        token_mask = np.ones(ids.shape, bool)
        return EncodedExample(ids, response_mask, token_mask, 0, example.truncated)
    ids = np.concatenate([[bos_token_id], response_ids]).astype(np.int32)
    response_mask = np.ones(ids.shape, bool)
    response_mask[0] = False
    token_mask = response_mask.copy()
    return EncodedExample(ids, response_mask, token_mask, 1, example.truncated)


def ifd_losses(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    examples: Sequence[EncodedExample],
    *,
    bos_token_id: int | None,
    tokens_per_batch: int = 8192,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
    conditioned: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(conditioned_n, unconditioned_n)`` mean response losses for IFD.

    ``conditioned`` takes the prompt-conditioned losses when they are already known (the
    Loss baseline computes the same numbers), which saves one pass over the examples.
    """
    kwargs = dict(
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    if conditioned is None:
        conditioned = mean_response_losses(graphdef, state, examples, desc="IFD (prompt)", **kwargs)
    elif np.shape(conditioned) != (len(examples),):
        raise ValueError(
            f"conditioned losses have shape {np.shape(conditioned)}, expected "
            f"({len(examples)},): one per example"
        )
    alone = [response_alone(e, bos_token_id) for e in examples]
    unconditioned = mean_response_losses(graphdef, state, alone, desc="IFD (alone)", **kwargs)
    return conditioned, unconditioned
