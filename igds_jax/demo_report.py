"""The demo's additions to a run's ``report.md``: what the kept features fire on, how the
scores split by record source, and how much of each selection is task data.

- ``feature_peaks``: one pass of the model over the pool that records, for each kept
  feature, every example's summed activation and its peak token;
- ``feature_examples``: the top pool examples of each feature with a snippet of text
  around the peak token (the peak token in ``[[ ]]``);
- ``plots/scores_by_source.png``: the FRS distribution of each record source;
- the task share (math share for the math demo) of every method's selection, against the
  pool's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from igds_jax import run_files
from igds_jax.frs import feature_activations
from igds_jax.method_batches import hook_stop_layer, make_batches, progress
from igds_jax.tokenize import EncodedExample
from models.transformer import forward, graphdef_config
from sae import SAEConfig, SAEParams

logger = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("graphdef", "sae_cfg", "hook_name"))
def _peaks_batch(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    tokens_bt: jax.Array,
    attention_mask_bt: jax.Array,
    token_mask_bt: jax.Array,
    positions_bt: jax.Array,
    feature_ids_m: jax.Array,
    *,
    sae_cfg: SAEConfig,
    hook_name: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per example and feature: summed activation, peak activation and peak column."""
    cfg = graphdef_config(graphdef, state)
    _, captured = forward(
        graphdef,
        state,
        tokens_bt,
        attention_mask_bt,
        capture=(hook_name,),
        stop_at_layer=hook_stop_layer(hook_name, cfg.n_layers),
        positions_bt=positions_bt,
    )
    acts_btm = feature_activations(sae, sae_cfg, captured[hook_name], feature_ids_m)
    acts_btm = jnp.where(token_mask_bt[..., None], acts_btm.astype(jnp.float32), 0.0)
    return acts_btm.sum(axis=1), acts_btm.max(axis=1), jnp.argmax(acts_btm, axis=1)


def feature_peaks(
    assets: Any,
    examples: Sequence[EncodedExample],
    feature_ids: Sequence[int],
    *,
    tokens_per_batch: int,
    max_tokens: int,
    bucket_multiple: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``sums_nm``, ``peaks_nm`` and ``peak_pos_nm`` (token index in each example)."""
    n, m = len(examples), len(feature_ids)
    sums_nm = np.zeros((n, m), np.float64)
    peaks_nm = np.zeros((n, m), np.float64)
    peak_pos_nm = np.zeros((n, m), np.int64)
    if m == 0 or n == 0:
        return sums_nm, peaks_nm, peak_pos_nm
    ids_m = np.asarray(feature_ids, np.int32)
    batches = make_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=assets.pad_id,
    )
    for batch in progress(batches, "feature peaks"):
        sums, peaks, cols = _peaks_batch(
            assets.graphdef,
            assets.state,
            assets.sae,
            batch.tokens_bt,
            batch.attention_mask_bt,
            batch.token_mask_bt,
            batch.positions_bt,
            ids_m,
            sae_cfg=assets.sae_cfg,
            hook_name=assets.hook_name,
        )
        real = batch.example_idx_b >= 0
        rows = batch.example_idx_b[real]
        cols = np.asarray(cols)[real]
        positions = np.take_along_axis(batch.positions_bt[real], cols, axis=1)
        sums_nm[rows] = np.asarray(sums, np.float64)[real]
        peaks_nm[rows] = np.asarray(peaks, np.float64)[real]
        peak_pos_nm[rows] = positions
    return sums_nm, peaks_nm, peak_pos_nm


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
    ax.set_title("FRS by record source (count in brackets)")
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
