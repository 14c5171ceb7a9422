"""The demo's additions to a run's ``report.md``: what the kept features fire on, how the
scores split by record source, and how much of each selection is task data.

- ``peaks_of``: for each shown feature, every pool example's summed activation and peak
  token, taken from the FRS pass (``igds_jax.frs.FeatureStats``);
- ``feature_examples``: the top pool examples of each feature with a snippet of text
  around the peak token (the peak token in ``[[ ]]``);
- ``plots/scores_by_source.png``: the FRS distribution of each record source;
- the task share (math share for the math demo) of every method's selection, against the
  pool's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from igds_jax import run_files
from igds_jax.frs import FeatureStats
from train.tokenize import EncodedExample

logger = logging.getLogger(__name__)


def peaks_of(
    stats: FeatureStats, feature_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``sums_nm``, ``peaks_nm`` and ``peak_pos_nm`` of ``feature_ids``, in that order."""
    column = {int(f): c for c, f in enumerate(stats.feature_ids)}
    missing = [int(f) for f in feature_ids if int(f) not in column]
    if missing:
        raise ValueError(f"features {missing} were not scored; scored: {sorted(column)}")
    cols = [column[int(f)] for f in feature_ids]
    return stats.sums_nm[:, cols], stats.peaks_nm[:, cols], stats.peak_pos_nm[:, cols]


def snippet(tokenizer: Any, ids: np.ndarray, position: int, context: int) -> str:
    """Decoded text around token ``position`` with that token in ``[[ ]]``, on one line."""
    start = max(0, position - context)
    before = tokenizer.decode(ids[start:position].tolist(), skip_special_tokens=False)
    peak = tokenizer.decode(ids[position : position + 1].tolist(), skip_special_tokens=False)
    after = tokenizer.decode(
        ids[position + 1 : position + 1 + context].tolist(), skip_special_tokens=False
    )
    text = f"{before}[[{peak}]]{after}"
    text = " ".join(text.split())  # newlines and runs of spaces to one space
    return text.replace("|", "\\|").replace("`", "'")


def feature_examples(
    pool_ids: Sequence[str],
    sources: Sequence[str],
    examples: Sequence[EncodedExample],
    feature_rows: Sequence[dict[str, Any]],
    peaks: tuple[np.ndarray, np.ndarray, np.ndarray],
    tokenizer: Any,
    *,
    top: int,
    context: int,
) -> list[dict[str, Any]]:
    """The top ``top`` pool examples by summed activation of each feature in ``feature_rows``
    (ties by id), each with its source and a snippet around its peak token."""
    sums_nm, peaks_nm, pos_nm = peaks
    out = []
    for j, row in enumerate(feature_rows):
        order = sorted(range(len(pool_ids)), key=lambda i: (-sums_nm[i, j], pool_ids[i]))
        shown = []
        for i in order[:top]:
            if sums_nm[i, j] <= 0:
                break
            shown.append(
                {
                    "id": pool_ids[i],
                    "source": sources[i],
                    "sum": float(sums_nm[i, j]),
                    "peak": float(peaks_nm[i, j]),
                    "snippet": snippet(
                        tokenizer, examples[i].input_ids, int(pos_nm[i, j]), context
                    ),
                }
            )
        fires = int((sums_nm[:, j] > 0).sum())
        out.append({**row, "pool_examples_firing": fires, "top_examples": shown})
    return out


def source_label(row: dict[str, Any]) -> str:
    """``source/task`` of a record, e.g. ``gsm_symbolic/math`` or ``sae_probes/sentiment``."""
    meta = row.get("meta") or {}
    return f"{row.get('source', '?')}/{meta.get('task', '?')}"


def plot_scores_by_source(scores_n: np.ndarray, labels: Sequence[str], path: Path) -> None:
    """Box plot of the FRS per record source (sources ordered by median score)."""
    from igds_jax.report import _pyplot

    plt = _pyplot()
    groups: dict[str, list[float]] = {}
    for score, label in zip(scores_n, labels, strict=True):
        groups.setdefault(label, []).append(float(score))
    names = sorted(groups, key=lambda k: -float(np.median(groups[k])))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    ax.boxplot([groups[k] for k in names], orientation="horizontal", showfliers=True)
    ax.set_yticks(range(1, len(names) + 1), [f"{k} ({len(groups[k])})" for k in names])
    ax.invert_yaxis()
    ax.set_xlabel("Feature-Resonant Score")
    ax.set_title("FRS by record source (record count in parentheses)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def task_shares(run_dir: Path, methods: Sequence[str], task: str) -> list[dict[str, Any]]:
    """Per method (``igds`` plus baselines): selected count and the share of task records."""
    rows = []
    for method in methods:
        folder = run_dir if method == "igds" else run_dir / "baselines" / method
        path = folder / "selection.jsonl"
        if not path.is_file():
            continue
        selected = run_files.read_jsonl(path)
        n_task = sum(1 for r in selected if (r.get("meta") or {}).get("task") == task)
        rows.append(
            {
                "method": method,
                "selected": len(selected),
                "task_records": n_task,
                "task_share": n_task / max(1, len(selected)),
            }
        )
    return rows
