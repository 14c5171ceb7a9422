"""Select the top-scoring examples of a pool and write them out for fine-tuning.

Every method (FRS and the baselines) produces one score per example, higher is better, and
goes through ``select_top``:

- Examples are ranked by score, descending; equal scores are ordered by example id
  (ascending string order). The ranking depends only on the (id, score) pairs, so it is the
  same for any order of the pool.
- A score of ``-inf`` marks an example as ineligible (IFD above its threshold, ZIP beyond
  its budget); it is never selected. NaN scores raise ValueError.
- The number kept is ``floor(fraction * pool size)`` or ``count``, counted against the whole
  pool (ineligible examples included), so every method trains on the same amount of data.
  With ``token_budget``, selection also stops before the first ranked example that would
  push the total token count over the budget.

``write_selection`` writes JSONL or Parquet rows with every original field (under its
original name), plus ``score`` and ``rank`` (1 = best), and optionally a chat ``messages``
field (``[{"role": "user", ...}, {"role": "assistant", ...}]``), the conversational format
TRL's ``SFTTrainer`` reads.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.records import DEFAULT_FIELDS, FieldNames, Record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Selected pool positions, best first, with their scores."""

    indices: np.ndarray  # [k] int64 positions into the pool
    scores: np.ndarray  # [k] float64
    num_pool: int
    num_ineligible: int

    @property
    def ranks(self) -> np.ndarray:
        """1-based rank of each selected example."""
        return np.arange(1, len(self.indices) + 1)


def _check_inputs(ids: Sequence[str], scores_n: np.ndarray) -> np.ndarray:
    scores_n = np.asarray(scores_n, dtype=np.float64)
    if scores_n.shape != (len(ids),):
        raise ValueError(f"scores_n has shape {scores_n.shape}, expected ({len(ids)},)")
    nan = np.flatnonzero(np.isnan(scores_n))
    if nan.size:
        examples = [ids[i] for i in nan[:5]]
        raise ValueError(
            f"{nan.size} scores are NaN (ids {examples}); use -inf to mark ineligible examples"
        )
    if len(set(ids)) != len(ids):
        dups = [i for i, c in Counter(ids).items() if c > 1]
        raise ValueError(f"example ids must be unique; repeated: {dups[:5]}")
    return scores_n


def rank_order(ids: Sequence[str], scores_n: np.ndarray) -> np.ndarray:
    """Return all pool positions ordered by (score descending, id ascending)."""
    scores_n = _check_inputs(ids, scores_n)
    ids_n = np.asarray([str(i) for i in ids], dtype=np.str_)
    return np.lexsort((ids_n, -scores_n))


def select_top(
    ids: Sequence[str],
    scores_n: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    token_budget: int | None = None,
    token_counts_n: np.ndarray | None = None,
) -> Selection:
    """Select the best examples; see the module docstring for the rules.

    Args:
      ids: unique example ids, one per pool position.
      scores_n: one score per example, higher is better; ``-inf`` means ineligible.
      fraction: keep ``floor(fraction * len(ids))`` examples. Default 0.5 when neither
        ``count`` nor ``token_budget`` is given.
      count: keep this many examples (instead of ``fraction``).
      token_budget: stop before the first ranked example that would exceed this many
        tokens in total; needs ``token_counts_n``. Alone, it is the only limit.
      token_counts_n: tokens per example.
    """
    if fraction is not None and count is not None:
        raise ValueError("pass fraction or count, not both")
    n = len(ids)
    if fraction is None and count is None and token_budget is None:
        fraction = 0.5
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        # the epsilon keeps 0.29 * 100 (28.999999999999996 in float64) from flooring to 28
        count = math.floor(fraction * n + 1e-9)
    if count is None:
        count = n
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")

    order = rank_order(ids, scores_n)
    scores_n = np.asarray(scores_n, dtype=np.float64)
    eligible = order[scores_n[order] > -np.inf]
    num_ineligible = n - len(eligible)
    chosen = eligible[:count]
    if len(chosen) < min(count, n):
        logger.warning(
            "requested %d examples but only %d of %d are eligible (score > -inf)",
            count,
            len(eligible),
            n,
        )

    if token_budget is not None:
        if token_counts_n is None:
            raise ValueError("token_budget needs token_counts_n (tokens per example)")
        tokens = np.asarray(token_counts_n, dtype=np.int64)
        if tokens.shape != (n,):
            raise ValueError(f"token_counts_n has shape {tokens.shape}, expected ({n},)")
        fits = np.cumsum(tokens[chosen]) <= token_budget
        chosen = chosen[: int(np.argmin(fits)) if not fits.all() else len(chosen)]

    return Selection(chosen.astype(np.int64), scores_n[chosen], n, num_ineligible)


def selection_rows(
    records: Sequence[Record],
    selection: Selection,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    add_messages: bool = False,
    score_field: str = "score",
    rank_field: str = "rank",
) -> list[dict[str, Any]]:
    """Return the output rows of a selection, best first."""
    added = [score_field, rank_field] + (["messages"] if add_messages else [])
    rows = []
    for rank, (i, score) in enumerate(zip(selection.indices, selection.scores, strict=True), 1):
        record = records[int(i)]
        row = record.to_row(fields)
        clash = [name for name in added if name in row]
        if clash:
            raise ValueError(
                f"record {record.id!r} already has field(s) {clash}; pass other names with "
                "score_field= / rank_field=, or add_messages=False"
            )
        row[score_field] = float(score)
        row[rank_field] = rank
        if add_messages:
            row["messages"] = [
                {"role": "user", "content": record.prompt},
                {"role": "assistant", "content": record.response},
            ]
        rows.append(row)
    return rows


def write_selection(
    path: str | Path,
    records: Sequence[Record],
    selection: Selection,
    **row_kwargs: Any,
) -> Path:
    """Write the selected rows to ``.jsonl`` or ``.parquet`` (chosen by suffix)."""
    path = Path(path)
    rows = selection_rows(records, selection, **row_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(
                f"cannot write {path} as Parquet: {e}. Some extra field has mixed types "
                "across rows; write .jsonl instead"
            ) from e
        pq.write_table(table, tmp)
    else:
        raise ValueError(f"unsupported output suffix {path.suffix!r}; use .jsonl or .parquet")
    tmp.replace(path)
    logger.info("wrote %d selected examples to %s", len(rows), path)
    return path
