"""The Markdown report of a run directory, with its plots.

``write_report(run_dir)`` reads whatever the steps have written so far (``summary.json``,
``features.jsonl``, ``feature_rates.npz``, ``scores.jsonl``, ``baselines/``,
``stability.json``) and writes ``report.md`` with figures under ``plots/``:

- ``frequency.png``: histogram of the recall score of every feature that fires on the task,
  with the recall cut (the lowest score among the candidates);
- ``deltas.png``: each candidate's causal delta, kept and dropped features in two colors,
  with the ``min_delta`` line;
- ``scores.png``: distribution of the FRS over the pool, with the lowest selected score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from igds_jax import run_files

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frequencies(scores_f: np.ndarray, cut: float | None, path: Path, contrast: bool) -> None:
    """Histogram of the recall scores of firing features, with the recall cut."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = scores_f[scores_f != 0]
    ax.hist(values, bins=50, color="tab:blue")
    ax.set_yscale("log")
    if cut is not None:
        ax.axvline(cut, color="tab:red", linestyle="--", label=f"recall cut {cut:.3g}")
        ax.legend()
    label = "task rate - reference rate" if contrast else "firing rate on task tokens"
    ax.set_xlabel(label)
    ax.set_ylabel("features")
    ax.set_title(f"Recall scores of {len(values)} features")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_deltas(rows: list[dict[str, Any]], min_delta: float, path: Path) -> None:
    """Bar chart of each candidate's causal delta, kept vs dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows)), 3.5))
    x = np.arange(len(rows))
    deltas = [r["delta"] for r in rows]
    colors = ["tab:green" if r["kept"] else "tab:gray" for r in rows]
    ax.bar(x, deltas, color=colors)
    ax.axhline(min_delta, color="tab:red", linestyle="--", label=f"min_delta {min_delta:g}")
    ax.set_xticks(x, [str(r["id"]) for r in rows], rotation=90, fontsize=7)
    ax.set_xlabel("candidate feature (recall rank order)")
    ax.set_ylabel("metric improvement")
    ax.legend()
    ax.set_title("Causal validation (green: kept)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scores(scores_n: np.ndarray, threshold: float | None, path: Path) -> None:
    """Histogram of pool FRS values with the lowest selected score."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    finite = scores_n[np.isfinite(scores_n)]
    ax.hist(finite, bins=50, color="tab:blue")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"selected >= {threshold:.3g}")
        ax.legend()
    ax.set_xlabel("Feature-Resonant Score")
    ax.set_ylabel("pool examples")
    ax.set_title(f"FRS of {len(finite)} pool examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return lines + [""]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _data_section(summary: dict[str, Any]) -> list[str]:
    data = summary.get("data", {})
    if not data:
        return []
    rows = []
    for role, report in data.items():
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(report.get("skipped", {}).items()))
        rows.append([role, report.get("num_rows"), report.get("num_loaded"), skipped or "none"])
    return ["## Data", ""] + _table(["input", "rows", "loaded", "skipped by reason"], rows)


def _features_section(run_dir: Path, summary: dict[str, Any], cfg: dict) -> list[str]:
    path = run_dir / "features.jsonl"
    if not path.is_file():
        return []
    rows = run_files.read_jsonl(path)
    ident = summary.get("identify", {})
    lines = [
        "## Features",
        "",
        f"Hook `{ident.get('hook_name')}`, {ident.get('d_sae')} SAE features, "
        f"{ident.get('num_features_firing')} fire on {ident.get('num_task_tokens')} task tokens. "
        f"{ident.get('num_candidates')} candidates ({ident.get('candidate_source')}), "
        f"{ident.get('num_kept')} kept.",
        "",
    ]
    plots = run_dir / "plots"
    rates = run_dir / "feature_rates.npz"
    if rates.is_file():
        with np.load(rates) as arrays:
            scores_f = arrays["recall_scores"]
            contrast = "reference_rates" in arrays
        cut = min((r["recall_score"] for r in rows), default=None)
        if ident.get("candidate_source") == "random":
            cut = None
        plot_frequencies(scores_f, cut, plots / "frequency.png", contrast)
        lines += ["![recall scores](plots/frequency.png)", ""]
    if rows and rows[0].get("delta") is not None:
        min_delta = float(cfg.get("causal", {}).get("min_delta", 0.0))
        metric = ident.get("causal_metric")
        plot_deltas(rows, min_delta, plots / "deltas.png")
        lines += [
            f"Causal metric: {metric} on {ident.get('num_dev_examples')} dev examples "
            "(at most `causal.max_dev_examples`, a seeded choice), base value "
            f"{_cell(ident.get('base_metric'))}. "
            f"{_DELTA_MEANING.get(metric, '')}A candidate is kept when its delta is above "
            f"{min_delta:g}.",
            "",
            "![causal deltas](plots/deltas.png)",
            "",
        ]
    table = [[r["id"], r["frequency"], r["recall_score"], r["delta"], r["kept"]] for r in rows]
    return lines + _table(["feature", "frequency", "recall score", "delta", "kept"], table)


_DELTA_MEANING = {
    "loss": "Delta is the base loss minus the loss with the feature amplified, so a positive "
    "delta means the edit lowered the dev loss. ",
    "accuracy": "Delta is the accuracy with the feature amplified minus the base accuracy, so "
    "a positive delta means the edit helped. ",
}


def _selection_section(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    lines = []
    scores_path = run_dir / "scores.jsonl"
    if scores_path.is_file():
        scores = np.asarray(
            [
                np.nan if r["score"] is None else r["score"]
                for r in run_files.read_jsonl(scores_path)
            ]
        )
        selected = run_dir / "selection.jsonl"
        threshold = None
        if selected.is_file():
            chosen = [r["score"] for r in run_files.read_jsonl(selected)]
            threshold = min(chosen) if chosen else None
        plot_scores(scores, threshold, run_dir / "plots" / "scores.png")
        score = summary.get("score", {})
        lines += [
            "## Scores and selection",
            "",
            f"FRS ({score.get('aggregate')} over {score.get('tokens')} tokens) of "
            f"{score.get('num_examples')} pool examples over {score.get('num_features')} "
            "features.",
            "",
            "![FRS distribution](plots/scores.png)",
            "",
        ]
    methods = []
    if "select" in summary:
        methods.append(["igds (FRS)", *_selection_counts(summary["select"])])
    for name, info in sorted(summary.get("baselines", {}).items()):
        methods.append([name, *_selection_counts(info)])
    if methods:
        if not lines:
            lines = ["## Selection", ""]
        lines += _table(["method", "pool", "selected", "ineligible", "files"], methods)
        lines += [
            "Ineligible examples have no finite score (score -inf, null in `scores.jsonl`): "
            "IFD above `max_ifd`, or for ZIP every example its greedy search did not pick "
            "(ZIP ranks by selection order, not by a per-example score).",
            "",
        ]
    return lines


def _selection_counts(info: dict[str, Any]) -> list[Any]:
    files = ", ".join(f"`{f}`" for f in info.get("files", []))
    return [info.get("num_pool"), info.get("num_selected"), info.get("num_ineligible"), files]


def _stability_section(run_dir: Path) -> list[str]:
    path = run_dir / "stability.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    rows = [
        ["Jaccard of top-k", result["jaccard"]],
        [f"Spearman over the top-k union ({result['num_union']})", result["spearman_union"]],
        [f"Spearman over all firing features ({result['num_all']})", result["spearman_all"]],
    ]
    return [
        "## Stability",
        "",
        f"Top-{result['top_k']} features by {result['score']} of `{result['sources'][0]}` vs "
        f"`{result['sources'][1]}`; shared: {result['shared']}.",
        "",
    ] + _table(["measure", "value"], rows)


def _timings_section(summary: dict[str, Any]) -> list[str]:
    timings = summary.get("timings_s", {})
    rates = summary.get("tokens_per_s", {})
    rows = [[step, seconds, rates.get(step)] for step, seconds in timings.items()]
    if not rows:
        return []
    note = (
        "Real tokens/s counts the tokens of the examples, not the padding added to batch "
        "them; compilation time is included."
    )
    return ["## Timings", ""] + _table(["step", "seconds", "real tokens/s"], rows) + [note, ""]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` from the files in ``run_dir``."""
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    summary = run_files.read_summary(run_dir)
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    lines = [f"# IGDS run `{run_dir.name}`", ""]
    if cfg:
        lines += [
            f"Model `{cfg['model']['path']}`, SAE `{cfg['sae']['path']}`; full settings in "
            "`config.yaml`, counts in `summary.json`.",
            "",
        ]
    lines += _data_section(summary)
    lines += _features_section(run_dir, summary, cfg)
    lines += _selection_section(run_dir, summary)
    lines += _stability_section(run_dir)
    lines += _timings_section(summary)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    logger.info("wrote %s", path)
    return path
