"""Causal validation by task accuracy: greedy answers with each candidate feature edited.

Used by ``igds_jax.causal.causal_validate`` with ``metric="accuracy"``. Rows are laid out
as in the loss metric (row ``g * R + r`` is prompt ``r`` with entry ``g`` edited, entry 0
being the unedited base), and the edit applies at every generation step, prompt included.
An answer counts as correct when ``train.metrics.exact_match(answer, reference)`` holds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
from flax import nnx
from tqdm import tqdm

from igds_jax.causal import IDENTITY, entry_groups, feature_intervention
from igds_jax.method_batches import make_batches
from models.generate import generate
from sae import SAEConfig, SAEParams, feature_edit
from train.tokenize import Batch, EncodedExample

logger = logging.getLogger(__name__)


def split_rows(batch: Batch, max_rows: int) -> list[Batch]:
    """Cut a batch into batches of at most ``max_rows`` rows."""
    rows = batch.tokens_bt.shape[0]
    if rows <= max_rows:
        return [batch]
    return [
        Batch(
            *(getattr(batch, f.name)[start : start + max_rows] for f in dataclasses.fields(batch))
        )
        for start in range(0, rows, max_rows)
    ]


def candidate_accuracies(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    feature_ids: Sequence[int],
    prompts: Sequence[EncodedExample],
    references: Sequence[str],
    *,
    decode: Callable[[np.ndarray], str],
    hook_name: str,
    mode: str = "amplify",
    value: float = 4.0,
    max_new_tokens: int = 256,
    tokens_per_call: int = 16384,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
) -> tuple[float, np.ndarray, int]:
    """Return ``(base_accuracy, accuracies_c, num_generated_tokens)`` over the prompts.

    ``tokens_per_call`` bounds ``rows * (prompt length + max_new_tokens)`` per call, except
    that a call always contains at least one prompt for every entry of its group.
    """
    from train.metrics import exact_match

    if len(references) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
    ids = np.asarray(feature_ids, np.int64)
    entry_ids = np.concatenate([[0], ids])
    entry_values = np.concatenate([[IDENTITY[mode]], np.full(len(ids), value)])
    intervention = feature_intervention(sae_cfg, mode)
    batches = []
    for batch in make_batches(
        prompts,
        tokens_per_batch=tokens_per_call,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
        pad_rows=False,
        padding_side="left",
    ):
        length = batch.tokens_bt.shape[1] + max_new_tokens
        batches.extend(split_rows(batch, max(1, tokens_per_call // length)))

    plan = []
    for batch in batches:
        rows, length = batch.tokens_bt.shape
        size = max(1, (tokens_per_call // (length + max_new_tokens)) // rows)
        plan.extend((batch, group) for group in entry_groups(len(entry_ids), size))

    hits = np.zeros(len(entry_ids), np.int64)
    generated = 0
    for batch, (group, num_valid) in tqdm(plan, desc="causal (generate)", unit="call", leave=False):
        rows = batch.tokens_bt.shape[0]
        edit = feature_edit(
            sae, np.repeat(entry_ids[group], rows), np.repeat(entry_values[group], rows)
        )
        out = generate(
            graphdef,
            state,
            np.tile(batch.tokens_bt, (len(group), 1)),
            np.tile(batch.attention_mask_bt, (len(group), 1)),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            interventions={hook_name: intervention},
            intervention_params={hook_name: edit},
        )
        for g in range(num_valid):
            for r in range(rows):
                row = g * rows + r
                answer = decode(out.tokens[row, : out.lengths[row]])
                reference = references[int(batch.example_idx_b[r])]
                hits[group[g]] += int(exact_match(answer, reference))
                generated += int(out.lengths[row])
    accuracies = hits / len(prompts)
    return float(accuracies[0]), accuracies[1:], generated
