"""Files of a run directory: features, scores, summary and the run log.

Layout written by ``igds_jax.pipeline`` (every path relative to ``run_dir``)::

    config.yaml               resolved config (file + --set overrides)
    run.log                   log of every command run in this directory (appended)
    summary.json              sections: data (rows loaded and skipped, by reason, per input),
                              tokenized, identify, score, select, baselines.<name>,
                              stability, timings_s and tokens_per_s (per step)
    feature_rates.npz         per SAE feature: task_rates, recall_scores, reference_rates
    features.jsonl / .csv     one row per candidate, columns FEATURE_COLUMNS
    scores.jsonl              FRS per pool example: id, score, num_tokens
    selection.jsonl/.parquet  the selected pool rows, best first, with score and rank
    baselines/<name>/         scores.jsonl (plus per-example losses for loss and ifd)
                              and selection.jsonl/.parquet
    stability.json            feature-set comparison of two task datasets
    report.md, plots/*.png    the Markdown report and its figures
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FEATURE_COLUMNS = (
    "id",
    "rank",
    "frequency",
    "reference_frequency",
    "recall_score",
    "metric_value",
    "delta",
    "kept",
)


def _json_value(value: Any) -> Any:
    """Return a JSON-safe value: NumPy scalars to Python, NaN and inf to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON lines through a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines; raises FileNotFoundError naming the step that writes the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the step that writes it first")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_features(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``features.jsonl`` and ``features.csv`` (columns ``FEATURE_COLUMNS``)."""
    write_jsonl(run_dir / "features.jsonl", rows)
    with open(run_dir / "features.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FEATURE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _json_value(row.get(k)) for k in FEATURE_COLUMNS})


def read_kept_features(run_dir: Path) -> list[int]:
    """Return the ids of the kept features in ``features.jsonl``, in file order."""
    rows = read_jsonl(run_dir / "features.jsonl")
    return [int(r["id"]) for r in rows if r["kept"]]


def write_scores(
    path: Path,
    ids: Sequence[str],
    scores_n: np.ndarray,
    num_tokens_n: Sequence[int] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one ``{"id", "score"[, "num_tokens"], **extra}`` row per example.

    Non-finite values (``-inf`` marks an ineligible example) are written as null.
    """
    rows = []
    for i, example_id in enumerate(ids):
        row: dict[str, Any] = {"id": example_id, "score": float(scores_n[i])}
        if num_tokens_n is not None:
            row["num_tokens"] = int(num_tokens_n[i])
        for name, values in (extra or {}).items():
            row[name] = float(values[i])
        rows.append(row)
    return write_jsonl(path, rows)


def read_scores(path: Path, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(scores_n, num_tokens_n or None)`` from ``path``, ordered as ``ids``.

    A null score is read back as ``-inf``. Raises ValueError when an id has no score, so a
    pool changed since scoring is noticed.
    """
    by_id = {str(row["id"]): row for row in read_jsonl(path)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{path} has no score for {len(missing)} pool examples (first: {missing[:3]}); "
            "the pool changed since scoring, so run the scoring step again"
        )
    rows = [by_id[i] for i in ids]
    scores = np.asarray([-math.inf if r["score"] is None else r["score"] for r in rows], float)
    if all("num_tokens" in r for r in rows):
        return scores, np.asarray([r["num_tokens"] for r in rows], np.int64)
    return scores, None


def update_summary(run_dir: Path, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into ``summary.json`` under ``section`` (nested keys merge too)."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    _merge(summary.setdefault(section, {}), values)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    tmp.replace(path)
    return summary


def _merge(target: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _json_value(value)


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def log_to_file(run_dir: Path) -> Iterator[Path]:
    """Append the log records that pass the root logger's level to ``run_dir/run.log``
    while the block runs (the ``igds`` CLI sets that level with ``--log-level``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
