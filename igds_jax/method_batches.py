"""Helpers shared by the method's model passes: hook depth, length buckets and token masks.

Every pass (recall, causal validation, FRS, the Loss and IFD baselines) cuts its examples
into length buckets with ``train.tokenize.pack_batches``. The bucket lengths come from
the configured ``max_tokens`` and ``bucket_multiple`` rather than from the data, so every
dataset reuses the same few compiled shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from models.hooks import parse_hook_name
from train.tokenize import Batch, EncodedExample, bucket_lengths, pack_batches

logger = logging.getLogger(__name__)


def hook_stop_layer(hook_name: str, n_layers: int) -> int:
    """Return the ``stop_at_layer`` that still computes ``hook_name`` (blocks 0..layer)."""
    layer, _ = parse_hook_name(hook_name, n_layers)
    return 0 if layer is None else layer + 1


def make_batches(
    examples: Sequence[EncodedExample],
    *,
    tokens_per_batch: int,
    max_tokens: int,
    bucket_multiple: int,
    pad_id: int,
    pad_rows: bool = True,
    padding_side: str = "right",
) -> list[Batch]:
    """Bucket ``examples`` by length into batches of about ``tokens_per_batch`` padded tokens."""
    if not examples:
        return []
    longest = max(e.length for e in examples)
    buckets = bucket_lengths(max(max_tokens, longest), multiple=bucket_multiple)
    return pack_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        buckets=buckets,
        padding_side=padding_side,  # type: ignore[arg-type]
        pad_id=pad_id,
        pad_rows=pad_rows,
    )


def token_set_mask(batch: Batch, tokens: str) -> np.ndarray:
    """Return the ``[B, T]`` bool mask of the tokens a statistic counts.

    ``tokens="all"`` is every real token except a leading BOS (prompt and response);
    ``"response"`` keeps the response tokens only.
    """
    if tokens == "all":
        return batch.token_mask_bt
    if tokens == "response":
        return batch.token_mask_bt & batch.response_mask_bt
    raise ValueError(f"tokens={tokens!r}; expected 'all' or 'response'")


def progress(batches: Sequence[Batch], desc: str) -> Iterator[Batch]:
    """Iterate ``batches`` under a tqdm bar counted in real tokens."""
    total = int(sum(int(b.attention_mask_bt.sum()) for b in batches))
    with tqdm(total=total, desc=desc, unit="tok", unit_scale=True, leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(int(batch.attention_mask_bt.sum()))


def pad_id_of(tokenizer: Any, model_pad_id: int | None) -> int:
    """Return the token id written at padded positions (masked out, so any valid id works)."""
    for value in (getattr(tokenizer, "pad_token_id", None), model_pad_id):
        if value is not None:
            return int(value)
    return 0


def count_tokens(examples: Iterable[EncodedExample]) -> int:
    """Return the total number of real tokens in ``examples``."""
    return int(sum(e.length for e in examples))
