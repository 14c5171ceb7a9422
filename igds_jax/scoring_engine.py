"""Streaming, resumable scoring of a corpus with a jitted per-batch score function.

The score function has the signature ``score_fn(params, batch) -> {name: scores_b}``:
``params`` is any pytree of arrays already placed on the mesh (see ``models.sharding``),
``batch`` contains the arrays named in :data:`BATCH_FIELDS`, each ``[B, T]``, and each output
is a float array ``[B]`` with one score per row. Padding rows have all-zero masks and their
scores are dropped.

How a run works (:meth:`ScoringEngine.run`):

- Examples arrive as a stream of ``(index, id, item)``; ``encode(item)`` turns an item into
  an :class:`~train.tokenize.EncodedExample`. Consecutive examples are grouped into
  chunks of ``chunk_size``, and each chunk becomes one shard file with a completion marker
  (``igds_jax.shard_io``). Only one chunk is in memory at a time, so memory stays flat as
  the corpus grows.
- Within a chunk, examples are bucketed by length into the fixed padded lengths of
  :meth:`ScoringEngine.buckets`. Full batches of a bucket have a fixed row count and the
  last one takes a row count from a short fixed ladder (:meth:`ScoringEngine.row_ladder`),
  so the number of compiled shapes is bounded by the settings, however large the corpus.
- A rerun with the same output directory skips chunks whose shard is complete, so a run
  killed at any point (SIGKILL included) resumes without losing or repeating an example.
  Batches depend only on the chunk's contents and the settings, so the resumed shards are
  byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from igds_jax import shard_io
from models.sharding import data_axis_size, local_rows, put_batch, sharded_jit
from train.tokenize import Batch, EncodedExample, bucket_lengths, pack_batches

logger = logging.getLogger(__name__)

# Batch arrays passed to the score function, with the dtypes train.tokenize gives them.
BATCH_DTYPES = {
    "tokens_bt": np.int32,
    "attention_mask_bt": np.int32,
    "token_mask_bt": np.bool_,
    "response_mask_bt": np.bool_,
}
BATCH_FIELDS = tuple(BATCH_DTYPES)
ScoreFn = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


@dataclass(frozen=True)
class ScoringConfig:
    """Batching and chunking of a scoring run."""

    # examples per shard file: the unit of resume and of host memory
    chunk_size: int = 2048
    # padded tokens per compiled call over all data shards; rows = this // padded length
    tokens_per_batch: int = 16384
    # longest example in tokens (the largest bucket); the encoder must truncate to it
    max_tokens: int = 1024
    # padded lengths: multiples of bucket_multiple ("multiple") or its doublings ("pow2")
    bucket_multiple: int = 64
    bucket_scheme: Literal["multiple", "pow2"] = "multiple"
    padding_side: Literal["left", "right"] = "right"
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("chunk_size", "tokens_per_batch", "max_tokens", "bucket_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ScoringConfig.{name} must be positive, got {getattr(self, name)}"
                )


@dataclass
class RunSummary:
    """Counts and wall time of one call of :meth:`ScoringEngine.run` in this process."""

    num_corpus_examples: int = 0  # examples of every process seen in the stream
    num_scored: int = 0  # this process's examples scored in this call
    num_resumed: int = 0  # this process's examples found already scored
    chunks_scored: int = 0
    chunks_resumed: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else 0.0


class ScoringEngine:
    """Score encoded examples in fixed-shape batches on a mesh, in memory or to shards."""

    def __init__(
        self,
        score_fn: ScoreFn,
        params: Any,
        score_names: Sequence[str],
        mesh: Mesh,
        config: ScoringConfig = ScoringConfig(),
    ):
        if not score_names:
            raise ValueError("score_names is empty; name the outputs of the score function")
        self.params = params
        self.score_names = tuple(score_names)
        self.mesh = mesh
        self.config = config
        self._data_shards = data_axis_size(mesh)
        self._jitted = sharded_jit(score_fn, mesh, params, {name: 2 for name in BATCH_FIELDS})

    def buckets(self) -> tuple[int, ...]:
        """Padded lengths, ascending; the last is ``max_tokens``."""
        c = self.config
        return bucket_lengths(c.max_tokens, scheme=c.bucket_scheme, multiple=c.bucket_multiple)

    def rows_for(self, length: int) -> int:
        """Rows of a full batch padded to ``length``: a multiple of the data shards."""
        rows = max(1, self.config.tokens_per_batch // length)
        return -(-rows // self._data_shards) * self._data_shards

    def row_ladder(self, length: int) -> tuple[int, ...]:
        """Row counts a batch of ``length`` may have, descending: the full count, then
        halvings down to the data shard count. The last batch of a bucket takes the smallest
        that fits, so it carries at most about twice the padding rows it needs."""
        rows, shards = self.rows_for(length), self._data_shards
        ladder = [rows]
        while ladder[-1] > shards:
            ladder.append(max(shards, -(-ladder[-1] // 2 // shards) * shards))
        return tuple(dict.fromkeys(ladder))

    def plan(self, lengths_n: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Batch layout for examples of ``lengths_n``: ``(padded length, rows, members)``
        per batch, where ``members`` are positions into ``lengths_n`` sorted by (length,
        position). Depends only on the lengths and the settings."""
        buckets = self.buckets()
        lengths_n = np.asarray(lengths_n, dtype=np.int64)
        if lengths_n.size and lengths_n.max() > buckets[-1]:
            raise ValueError(
                f"an example has {lengths_n.max()} tokens, over max_tokens={buckets[-1]}; "
                f"truncate examples to ScoringConfig.max_tokens when encoding"
            )
        order = np.lexsort((np.arange(lengths_n.size), lengths_n))
        bucket_of = np.searchsorted(np.asarray(buckets), lengths_n[order])
        layout = []
        for b, length in enumerate(buckets):
            members = order[bucket_of == b]
            ladder = self.row_ladder(length)
            start = 0
            while start < members.size:
                left = members.size - start
                rows = ladder[0] if left >= ladder[0] else min(r for r in ladder if r >= left)
                layout.append((length, rows, members[start : start + rows]))
                start += rows
        return layout

    def batches(self, examples: Sequence[EncodedExample]) -> Iterator[Batch]:
        """Batches covering ``examples`` once, in the shapes of :meth:`plan`."""
        for length, rows, members in self.plan(np.asarray([e.length for e in examples])):
            (batch,) = pack_batches(
                [examples[i] for i in members],
                tokens_per_batch=rows * length,
                buckets=[length],
                padding_side=self.config.padding_side,
                pad_id=self.config.pad_id,
            )
            keep = batch.example_idx_b >= 0
            idx = np.where(keep, members[np.maximum(batch.example_idx_b, 0)], -1)
            yield dataclasses.replace(batch, example_idx_b=idx)

    def warm_up(self, lengths_n: np.ndarray) -> int:
        """Compile every batch shape that examples of ``lengths_n`` need, by running one
        all-padding batch per shape; returns the number of shapes."""
        shapes = sorted({(rows, length) for length, rows, _ in self.plan(lengths_n)})
        for rows, length in shapes:
            zeros = {name: np.zeros((rows, length), dtype) for name, dtype in BATCH_DTYPES.items()}
            zeros["tokens_bt"][:] = self.config.pad_id
            outputs = self._jitted(self.params, put_batch(self.mesh, zeros))
            jax.block_until_ready(outputs)
        return len(shapes)

    def score_examples(self, examples: Sequence[EncodedExample]) -> dict[str, np.ndarray]:
        """Score examples in memory; returns ``{name: [n] float32}`` in input order."""
        out = {name: np.full(len(examples), np.nan, np.float32) for name in self.score_names}
        pending = []
        for batch in self.batches(examples):
            arrays = put_batch(self.mesh, {name: getattr(batch, name) for name in BATCH_FIELDS})
            # dispatch is asynchronous: the host packs the next batch while this one runs.
            pending.append((batch.example_idx_b, self._jitted(self.params, arrays)))
        for idx_b, scores in pending:
            self._check_outputs(scores, idx_b.shape[0])
            keep = idx_b >= 0
            for name in self.score_names:
                out[name][idx_b[keep]] = local_rows(scores[name])[keep]
        return out

    def _check_outputs(self, scores: Mapping[str, jax.Array], rows: int) -> None:
        if set(scores) != set(self.score_names):
            raise ValueError(
                f"score function returned {sorted(scores)}, expected {list(self.score_names)}"
            )
        for name, value in scores.items():
            if value.shape != (rows,):
                raise ValueError(
                    f"score {name!r} has shape {value.shape}, expected ({rows},): one float "
                    f"per batch row"
                )

    def run(
        self,
        items: Iterable[tuple[int, str, Any]],
        encode: Callable[[Any], EncodedExample],
        out_dir: str | Path,
        *,
        manifest: Mapping[str, Any],
        process_id: int = 0,
        num_processes: int = 1,
    ) -> RunSummary:
        """Score this process's share of ``items`` into shard files under ``out_dir``.

        ``items`` is the whole corpus stream ``(index, id, item)`` with indices ``0, 1, ...``
        in order; examples with ``index % num_processes == process_id`` are this process's.
        ``manifest`` describes everything the scores depend on (model, SAE, features,
        corpus). It is stored with the run, and a resume with a different manifest raises
        ValueError. Finished chunks are skipped without encoding their items.
        """
        start = time.perf_counter()
        out_dir = Path(out_dir)
        shard_dir = out_dir / shard_io.SHARD_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        shard_io.check_manifest(out_dir, self._manifest(manifest, num_processes))
        shard_io.remove_stale_temp_files(shard_dir, process_id)

        summary = RunSummary()
        counted = _CountingStream(items)
        mine = (item for item in counted if item[0] % num_processes == process_id)
        progress = tqdm(desc=f"scoring (process {process_id})", unit=" examples", disable=None)
        for chunk, members in enumerate(_chunks(mine, self.config.chunk_size)):
            if shard_io.chunk_done(shard_dir, process_id, chunk):
                summary.chunks_resumed += 1
                summary.num_resumed += len(members)
            else:
                self._score_chunk(shard_dir, process_id, chunk, members, encode, summary)
            progress.update(len(members))
        progress.close()
        num_chunks = summary.chunks_scored + summary.chunks_resumed
        summary.num_corpus_examples = counted.count
        summary.seconds = time.perf_counter() - start
        shard_io.write_process_marker(
            shard_dir,
            process_id,
            {
                "num_chunks": num_chunks,
                "num_examples": summary.num_scored + summary.num_resumed,
                "num_corpus_examples": counted.count,
            },
        )
        logger.info(
            "process %d: scored %d examples in %d chunks, resumed %d chunks, %.1f s "
            "(%.0f tokens/s, %.0f%% padding)",
            process_id,
            summary.num_scored,
            summary.chunks_scored,
            summary.chunks_resumed,
            summary.seconds,
            summary.tokens_per_second,
            100 * (1 - summary.real_tokens / max(summary.padded_tokens, 1)),
        )
        return summary

    def _manifest(self, manifest: Mapping[str, Any], num_processes: int) -> dict[str, Any]:
        c = self.config
        return {
            **manifest,
            "score_names": list(self.score_names),
            "num_processes": num_processes,
            "chunk_size": c.chunk_size,
            "buckets": list(self.buckets()),
            # batch shapes decide which rows share a call, so float rounding can depend on them
            "rows_per_bucket": [list(self.row_ladder(b)) for b in self.buckets()],
            "padding_side": c.padding_side,
        }

    def _score_chunk(
        self,
        shard_dir: Path,
        process_id: int,
        chunk: int,
        members: list[tuple[int, str, Any]],
        encode: Callable[[Any], EncodedExample],
        summary: RunSummary,
    ) -> None:
        examples = [encode(item) for _, _, item in members]
        scores = self.score_examples(examples)
        data = shard_io.encode_rows(
            [index for index, _, _ in members], [example_id for _, example_id, _ in members], scores
        )
        shard_io.write_chunk(shard_dir, process_id, chunk, data, len(members))
        real = sum(e.length for e in examples)
        plan = self.plan(np.asarray([e.length for e in examples]))
        padded = sum(length * rows for length, rows, _ in plan)
        summary.chunks_scored += 1
        summary.num_scored += len(members)
        summary.real_tokens += real
        summary.padded_tokens += padded


class _CountingStream:
    """Iterate over ``items`` and count them, checking that indices run 0, 1, 2, ..."""

    def __init__(self, items: Iterable[tuple[int, str, Any]]):
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, str, Any]]:
        for item in self._items:
            if item[0] != self.count:
                raise ValueError(
                    f"corpus stream gave index {item[0]} at position {self.count}; indices "
                    f"must run 0, 1, 2, ... in stream order"
                )
            self.count += 1
            yield item


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
