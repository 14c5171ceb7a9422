"""Shuffle buffer that mixes streamed activations across documents before training.

Consecutive activations from one document are strongly correlated; training on them in
order biases each step. The buffer reads source batches until it contains ``capacity``
rows, shuffles them, and hands out training batches until it is half empty, then
refills and shuffles again (the scheme SAELens' activation store uses).

Its state (remaining rows, NumPy generator state, number of source batches read) is
saved with each training checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class ActivationBuffer:
    """Shuffling buffer over an iterator of ``[n, d_in]`` float32 activation arrays."""

    def __init__(
        self,
        source: Iterator[np.ndarray],
        *,
        capacity: int,
        batch_size: int,
        seed: int,
        d_in: int | None = None,
    ):
        if batch_size <= 0 or capacity < 2 * batch_size:
            raise ValueError(
                f"shuffle buffer capacity ({capacity}) must be at least twice the batch size "
                f"({batch_size}) so that batches mix more than one refill"
            )
        self.source = source
        self.capacity = capacity
        self.batch_size = batch_size
        self.d_in = d_in
        self.rng = np.random.default_rng(seed)
        self.rows = np.zeros((0, d_in or 0), np.float32)
        self.batches_read = 0
        self.exhausted = False

    def _read(self) -> np.ndarray | None:
        try:
            batch = next(self.source)
        except StopIteration:
            self.exhausted = True
            logger.info("activation source exhausted after %d batches", self.batches_read)
            return None
        batch = np.asarray(batch, dtype=np.float32)
        index = self.batches_read
        self.batches_read += 1
        if batch.ndim != 2:
            raise ValueError(
                f"activation batch {index} has shape {batch.shape}; expected [n, d_in]"
            )
        if self.d_in is None:
            self.d_in = batch.shape[1]
            self.rows = self.rows.reshape(0, self.d_in)
        if batch.shape[1] != self.d_in:
            raise ValueError(
                f"activation batch {index} has width {batch.shape[1]}, expected d_in={self.d_in}"
            )
        if not np.isfinite(batch).all():
            raise ValueError(f"activation batch {index} contains NaN or inf values")
        return batch

    def _refill(self) -> None:
        new = []
        n = len(self.rows)
        while n < self.capacity and not self.exhausted:
            batch = self._read()
            if batch is not None:
                new.append(batch)
                n += len(batch)
        if new:
            self.rows = np.concatenate([self.rows.reshape(-1, self.d_in), *new])
        self.rows = self.rows[self.rng.permutation(len(self.rows))]

    def next_batch(self) -> np.ndarray:
        """Return the next ``[batch_size, d_in]`` batch; StopIteration when the source ends."""
        if len(self.rows) < max(self.capacity // 2, self.batch_size) and not self.exhausted:
            self._refill()
        if len(self.rows) < self.batch_size:
            raise StopIteration
        batch, self.rows = self.rows[: self.batch_size], self.rows[self.batch_size :]
        return batch

    def __iter__(self) -> ActivationBuffer:
        return self

    def __next__(self) -> np.ndarray:
        return self.next_batch()

    def state(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Return (remaining rows, JSON-serializable position) for a checkpoint."""
        position = {
            "batches_read": self.batches_read,
            "exhausted": self.exhausted,
            "rng_state": self.rng.bit_generator.state,
            "d_in": self.d_in,
        }
        return np.array(self.rows), position

    def restore(self, rows: np.ndarray, position: dict[str, Any]) -> None:
        """Restore the buffer from ``state()``; the source must already be positioned
        after ``position["batches_read"]`` batches."""
        self.rows = np.asarray(rows, np.float32)
        self.batches_read = int(position["batches_read"])
        self.exhausted = bool(position["exhausted"])
        self.rng.bit_generator.state = position["rng_state"]
        self.d_in = position["d_in"]
