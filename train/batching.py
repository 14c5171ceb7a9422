"""The order of training batches: length buckets, shuffled per epoch, resumable by step.

Each example goes to the smallest bucket length (multiples of ``bucket_multiple`` up to
``max_len``) that fits it. A bucket of length ``L`` gets ``rows = tokens_per_batch // L``
rows per micro-batch, rounded up to a multiple of ``row_multiple`` (the 'data' axis size,
so every device gets the same number of rows). One optimizer step takes
``accum_steps`` micro-batches from a single bucket, so a step has one shape ``[A, rows, L]``
and compiles once per bucket.

Epoch ``e``: the examples of each bucket are permuted with ``numpy.random.default_rng((seed,
e))``, cut into steps, and the steps of all buckets are permuted together. The last step of
a bucket is filled with empty rows (zero loss weight). The number of steps per epoch does
not depend on ``e``, so a global step number alone gives the epoch and the position in it:
a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from train.tokenize import EncodedExample, bucket_lengths, pack_batches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: its bucket length, rows per micro-batch and example indices."""

    length: int
    rows: int
    example_idx: np.ndarray  # [accum_steps * rows], -1 marks an empty row


class StepSchedule:
    """Deterministic, shuffled step plans over a list of encoded examples."""

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        *,
        tokens_per_batch: int,
        bucket_multiple: int = 64,
        max_len: int | None = None,
        accum_steps: int = 1,
        row_multiple: int = 1,
        seed: int = 0,
        pad_id: int = 0,
    ):
        if not examples:
            raise ValueError("no training examples; check data.train and data.max_examples")
        if accum_steps < 1 or row_multiple < 1:
            raise ValueError(
                f"accum_steps={accum_steps} and row_multiple={row_multiple} must be at least 1"
            )
        self.examples = list(examples)
        self.accum_steps = accum_steps
        self.seed = seed
        self.pad_id = pad_id

        # buckets and rows per micro-batch.
        longest = max(e.length for e in self.examples)
        self.buckets = bucket_lengths(max_len or longest, multiple=bucket_multiple)
        if longest > self.buckets[-1]:
            raise ValueError(
                f"an example has {longest} tokens, over max_len={self.buckets[-1]}; "
                "raise max_len or lower data.max_tokens"
            )
        lengths = np.asarray([e.length for e in self.examples])
        slot = np.searchsorted(np.asarray(self.buckets), lengths)
        self.members = {length: np.flatnonzero(slot == i) for i, length in enumerate(self.buckets)}
        self.members = {k: v for k, v in self.members.items() if v.size}

        self.rows = {}
        for length in self.members:
            rows = max(1, tokens_per_batch // length)
            self.rows[length] = math.ceil(rows / row_multiple) * row_multiple

        self.steps_per_epoch = sum(
            math.ceil(len(m) / (self.rows[k] * accum_steps)) for k, m in self.members.items()
        )
        self._cached_epoch: int | None = None
        self._cached_plan: list[StepPlan] = []

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        """Return the steps of ``epoch`` in training order."""
        if self._cached_epoch == epoch:
            return self._cached_plan
        rng = np.random.default_rng((self.seed, epoch))
        plan = []
        for length, members in self.members.items():
            per_step = self.rows[length] * self.accum_steps
            shuffled = rng.permutation(members)
            for start in range(0, len(shuffled), per_step):
                chunk = shuffled[start : start + per_step]
                padded = np.full(per_step, -1, np.int64)
                padded[: len(chunk)] = chunk
                plan.append(StepPlan(length, self.rows[length], padded))
        order = rng.permutation(len(plan))
        self._cached_epoch, self._cached_plan = epoch, [plan[i] for i in order]
        return self._cached_plan

    def plan(self, step: int) -> StepPlan:
        """Return the plan of global step ``step`` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return self.epoch_plan(epoch)[index]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Build the ``[A, rows, L]`` arrays of global step ``step``."""
        plan = self.plan(step)
        micro = [
            self._micro_batch(plan.example_idx[a * plan.rows : (a + 1) * plan.rows], plan.length)
            for a in range(self.accum_steps)
        ]
        return {key: np.stack([m[key] for m in micro]) for key in micro[0]}

    def _micro_batch(self, idx: np.ndarray, length: int) -> dict[str, np.ndarray]:
        rows = len(idx)
        chosen = [self.examples[i] for i in idx if i >= 0]
        tokens = np.full((rows, length), self.pad_id, np.int32)
        attention = np.zeros((rows, length), np.int32)
        positions = np.zeros((rows, length), np.int32)
        weights = np.zeros((rows, length), np.float32)
        if chosen:
            (packed,) = pack_batches(
                chosen, tokens_per_batch=rows * length, buckets=[length], pad_id=self.pad_id
            )
            # pack_batches sorts rows by length. Putting them back in chosen order makes row
            # r of the batch example idx[r], with empty rows (idx -1) last.
            n = len(chosen)
            order = np.argsort(packed.example_idx_b[:n])
            tokens[:n], attention[:n] = packed.tokens_bt[order], packed.attention_mask_bt[order]
            positions[:n] = packed.positions_bt[order]
            weights[:n] = packed.response_mask_bt[order] & attention[:n].astype(bool)
            weights[:, 0] = 0.0
        return {
            "tokens": tokens,
            "attention_mask": attention,
            "positions": positions,
            "loss_mask": weights,
        }


def eval_batches(
    examples: Sequence[EncodedExample],
    *,
    tokens_per_batch: int,
    bucket_multiple: int = 64,
    row_multiple: int = 1,
    pad_id: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Return every example once, in padded ``[rows, L]`` batches with loss weights."""
    schedule = StepSchedule(
        examples,
        tokens_per_batch=tokens_per_batch,
        bucket_multiple=bucket_multiple,
        row_multiple=row_multiple,
        pad_id=pad_id,
    )
    out = []
    for length, members in schedule.members.items():
        rows = schedule.rows[length]
        for start in range(0, len(members), rows):
            idx = np.full(rows, -1, np.int64)
            chunk = members[start : start + rows]
            idx[: len(chunk)] = chunk
            out.append(schedule._micro_batch(idx, length))
    return out
