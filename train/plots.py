"""Loss curves of a run, drawn from its ``metrics.jsonl``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_losses(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot train loss (and held-out loss when logged) against step; None without rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not held:
        logger.warning("%s has no loss rows; no plot written", metrics_path)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train (response tokens)")
    if held:
        ax.plot(*zip(*held, strict=True), marker="o", label="held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
