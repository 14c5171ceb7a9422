"""Activations of a model at one hook point, streamed over a text corpus.

This is the glue between ``models`` and ``sae``: SAE training reads ``[n, d_model]``
float32 chunks from :func:`stream_activations`, and :func:`spliced_loss` measures how much
the model's next-token loss rises when the SAE's reconstruction replaces the activation.
Only real tokens are kept: padding and the BOS position (whose activations are outliers)
are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from models.hooks import parse_hook_name
from models.loading import LoadedModel
from models.transformer import forward, token_losses

logger = logging.getLogger(__name__)


@dataclass
class TokenBatch:
    tokens_bt: np.ndarray  # int32, right-padded
    mask_bt: np.ndarray  # int32, 1 on real tokens


def batch_texts(
    tokenizer, texts: Iterable[str], *, seq_len: int, batch_size: int, bucket: int = 32
) -> Iterator[TokenBatch]:
    """Tokenize documents (truncated to ``seq_len``) into right-padded batches.

    Batches are padded to a multiple of ``bucket`` tokens, so only ``seq_len / bucket``
    shapes ever compile. Empty documents are skipped.
    """
    rows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
        if len(ids) < 2:
            continue
        rows.append(ids)
        if len(rows) == batch_size:
            yield _pad(rows, bucket, seq_len)
            rows = []
    if rows:
        yield _pad(rows, bucket, seq_len)


def _pad(rows: list[list[int]], bucket: int, seq_len: int) -> TokenBatch:
    t = min(seq_len, -(-max(len(r) for r in rows) // bucket) * bucket)
    tokens = np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r, 1
    return TokenBatch(tokens, mask)


def keep_mask(batch: TokenBatch, bos_token_id: int | None) -> np.ndarray:
    """Real tokens minus a leading BOS token."""
    keep = batch.mask_bt.astype(bool).copy()
    if bos_token_id is not None:
        keep[:, 0] &= batch.tokens_bt[:, 0] != bos_token_id
    return keep


def stream_activations(
    model: LoadedModel,
    texts: Iterable[str],
    hook_name: str,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
) -> Iterator[np.ndarray]:
    """Yield ``[n_tokens, d_model]`` float32 activations at ``hook_name``, batch by batch."""
    layer, _ = parse_hook_name(hook_name, model.config.n_layers)
    stop = None if layer is None else layer + 1
    for batch in batch_texts(model.tokenizer, texts, seq_len=seq_len, batch_size=batch_size):
        _, captured = forward(
            model.graphdef,
            model.state,
            batch.tokens_bt,
            batch.mask_bt,
            capture=[hook_name],
            stop_at_layer=stop,
        )
        acts_btd = np.asarray(captured[hook_name], dtype=np.float32)
        yield acts_btd[keep_mask(batch, model.config.bos_token_id)]


def spliced_loss(
    model: LoadedModel,
    texts: Iterable[str],
    hook_name: str,
    splice,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean next-token loss with and without ``splice`` (an intervention) at the hook.

    Returns ``{'loss': ..., 'loss_spliced': ..., 'loss_increase': ..., 'tokens': ...}``.
    """
    total = total_spliced = 0.0
    count = 0
    for batch in batch_texts(model.tokenizer, texts, seq_len=seq_len, batch_size=batch_size):
        tokens = jnp.asarray(batch.tokens_bt)
        # a target counts when it and its context token are both real.
        valid = batch.mask_bt.astype(bool)
        valid[:, 0] = False
        logits, _ = forward(model.graphdef, model.state, batch.tokens_bt, batch.mask_bt)
        spliced, _ = forward(
            model.graphdef,
            model.state,
            batch.tokens_bt,
            batch.mask_bt,
            interventions={hook_name: splice},
        )
        total += float(np.asarray(token_losses(logits, tokens))[valid].sum())
        total_spliced += float(np.asarray(token_losses(spliced, tokens))[valid].sum())
        count += int(valid.sum())
    if count == 0:
        raise ValueError("spliced_loss: no tokens to score; pass non-empty texts")
    loss, loss_spliced = total / count, total_spliced / count
    return {
        "loss": loss,
        "loss_spliced": loss_spliced,
        "loss_increase": loss_spliced - loss,
        "tokens": count,
    }


def hook_dim_check(model: LoadedModel, d_in: int, hook_name: str) -> None:
    """Fail before heavy work when an SAE's width does not match the model's residual."""
    parse_hook_name(hook_name, model.config.n_layers)
    if d_in != model.config.d_model:
        raise ValueError(
            f"SAE d_in={d_in} does not match the model's d_model="
            f"{model.config.d_model} at {hook_name}; use an SAE trained on this "
            f"model"
        )


__all__ = [
    "TokenBatch",
    "batch_texts",
    "hook_dim_check",
    "keep_mask",
    "spliced_loss",
    "stream_activations",
]
