"""The IGDS pipeline: identify -> score -> select, the baselines, and feature stability.

Each step reads its inputs from the config and the run directory and writes its outputs
there (layout in ``igds_jax.run_files``), so steps can run one by one (``igds identify``,
``igds score``, ``igds select``) or together (``igds run``):

1. identify: frequency recall on the task examples (minus the dev split), then causal
   validation of the candidates on the dev examples -> ``features.jsonl``.
2. score: the FRS of every pool example over the kept features -> ``scores.jsonl``.
3. select: the top examples by score -> ``selection.jsonl`` / ``.parquet``.

Ablations: ``causal.enabled=false`` keeps every recall candidate (recall only);
``causal.candidates=random`` validates seeded random features instead of recall candidates.

NOTE: the pool is scored in memory; corpora larger than host memory need the streaming,
sharded runner in ``igds_jax.scoring_engine``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from igds_jax import run_files
from igds_jax.baseline_runs import run_baseline
from igds_jax.causal import CausalResult, causal_validate
from igds_jax.frs import frs_scores
from igds_jax.method_inputs import cap_examples, split_dev
from igds_jax.recall import RecallResult, frequency_recall
from igds_jax.run_context import Dataset, Run, select_and_write
from igds_jax.selection import Selection
from igds_jax.stability import compare_feature_scores
from train.records import Record

logger = logging.getLogger(__name__)


@dataclass
class IdentifyResult:
    """Outputs of the identify step."""

    recall: RecallResult
    candidates: np.ndarray  # [C] feature ids that went into causal validation
    causal: CausalResult | None  # None when causal validation is disabled
    kept: list[int]  # validated feature ids, in candidate order


# ------------------------------------------------------------------------------ identify


def recall_on(
    run: Run, name: str, records: list[Record], section: str = "identify"
) -> RecallResult:
    """Run frequency recall on ``records`` (contrasted with the reference when set).

    ``name`` labels the records' tokenization counts and timing in the summary.
    """
    cfg, assets = run.cfg, run.assets()
    examples = run.encoded(name, records)
    reference = None
    if cfg.data.reference and cfg.recall.contrast:
        run.dataset("reference")
        reference = run.encoded("reference")
    tokens = sum(e.length for e in examples) + sum(e.length for e in reference or [])
    with run.timed(section, name, tokens):
        return frequency_recall(
            assets.graphdef,
            assets.state,
            assets.sae,
            assets.sae_cfg,
            examples,
            hook_name=assets.hook_name,
            reference_examples=reference,
            tokens=cfg.recall.tokens,
            num_candidates=cfg.recall.num_candidates,
            min_rate=cfg.recall.min_rate,
            tokens_per_batch=cfg.data.tokens_per_batch,
            **run.batch_kwargs(),
        )


def choose_candidates(run: Run, recall: RecallResult) -> np.ndarray:
    """Return the recall candidates, or seeded random features for the ablation."""
    causal = run.cfg.causal
    if causal.candidates == "recall":
        return recall.candidates
    d_sae = run.assets().sae_cfg.d_sae
    count = min(causal.num_random or run.cfg.recall.num_candidates, d_sae)
    rng = np.random.default_rng(run.cfg.seed)
    return np.sort(rng.choice(d_sae, size=count, replace=False)).astype(np.int64)


def validate_on(
    run: Run, candidates: np.ndarray, dev: list[Record], name: str = "dev"
) -> CausalResult:
    """Run causal validation of ``candidates`` on the dev records (labelled ``name``)."""
    cfg, assets = run.cfg, run.assets()
    examples = run.encoded(name, dev)
    tokens = sum(e.length for e in examples) * (len(candidates) + 1)
    with run.timed("identify", f"causal_{name}", tokens):
        return causal_validate(
            assets.graphdef,
            assets.state,
            assets.sae,
            assets.sae_cfg,
            candidates,
            examples,
            hook_name=assets.hook_name,
            mode=cfg.causal.mode,
            alpha=cfg.causal.alpha,
            steer_coef=cfg.causal.steer_coef,
            metric=cfg.causal.metric,
            min_delta=cfg.causal.min_delta,
            tokens_per_call=cfg.causal.tokens_per_call,
            references=[r.response for r in dev],
            decode=lambda ids: assets.tokenizer.decode(ids, skip_special_tokens=True),
            max_new_tokens=cfg.causal.max_new_tokens,
            **run.batch_kwargs(),
        )


def task_split(run: Run, task: Dataset) -> tuple[list[Record], list[Record]]:
    """Return (recall records, dev records) under the config's dev rules."""
    data = run.cfg.data
    if data.dev:
        recall_records, dev = task.records, run.dataset("dev").records
    else:
        recall_records, dev = split_dev(
            task.records, data.dev_fraction, run.cfg.seed, data.group_field
        )
    return recall_records, cap_examples(dev, run.cfg.causal.max_dev_examples, run.cfg.seed)


def feature_rows(
    recall: RecallResult, candidates: np.ndarray, causal: CausalResult | None
) -> list[dict[str, Any]]:
    rows = []
    for rank, fid in enumerate(candidates.tolist(), 1):
        ref = recall.reference_rates_f
        row = {
            "id": fid,
            "rank": rank,
            "frequency": float(recall.rates_f[fid]),
            "reference_frequency": None if ref is None else float(ref[fid]),
            "recall_score": float(recall.scores_f[fid]),
            "metric_value": None,
            "delta": None,
            "kept": True,
        }
        if causal is not None:
            c = rank - 1
            row.update(
                metric_value=float(causal.values_c[c]),
                delta=float(causal.deltas_c[c]),
                kept=bool(causal.kept_c[c]),
            )
        rows.append(row)
    return rows


def identify(run: Run) -> IdentifyResult:
    """Recall and causally validate the task's features; write ``features.jsonl/csv``."""
    cfg = run.cfg
    task = run.dataset("task")
    recall_records, dev = task_split(run, task) if cfg.causal.enabled else (task.records, [])
    recall = recall_on(run, "recall", recall_records)
    candidates = choose_candidates(run, recall)
    causal = validate_on(run, candidates, dev) if cfg.causal.enabled and len(candidates) else None

    rows = feature_rows(recall, candidates, causal)
    run_files.write_features(run.run_dir, rows)
    arrays = {"task_rates": recall.rates_f, "recall_scores": recall.scores_f}
    if recall.reference_rates_f is not None:
        arrays["reference_rates"] = recall.reference_rates_f
    np.savez(run.run_dir / "feature_rates.npz", **arrays)
    kept = [r["id"] for r in rows if r["kept"]]
    run_files.update_summary(
        run.run_dir,
        "identify",
        {
            "hook_name": run.assets().hook_name,
            "d_sae": run.assets().sae_cfg.d_sae,
            "num_recall_examples": len(recall_records),
            "num_dev_examples": len(dev),
            "num_task_tokens": recall.num_tokens,
            "num_features_firing": int((recall.rates_f > 0).sum()),
            "candidate_source": cfg.causal.candidates,
            "num_candidates": len(candidates),
            "causal_enabled": cfg.causal.enabled,
            "causal_metric": cfg.causal.metric if causal else None,
            "base_metric": causal.base_value if causal else None,
            "num_kept": len(kept),
            "num_dropped": len(candidates) - len(kept),
            "kept_features": kept,
        },
    )
    logger.info("identify: kept %d of %d candidate features", len(kept), len(candidates))
    return IdentifyResult(recall, candidates, causal, kept)


# ------------------------------------------------------------------------ score & select


def score(run: Run, kept: list[int] | None = None, feature_stats: bool = False) -> np.ndarray:
    """Score every pool example by FRS over the kept features; write ``scores.jsonl``.

    With ``feature_stats``, each feature's per-example activation summary
    (``igds_jax.frs.FeatureStats``) stays in ``run.memo["frs_feature_stats"]`` for a
    report to use.
    """
    cfg, assets = run.cfg, run.assets()
    if kept is None:
        kept = run_files.read_kept_features(run.run_dir)
    pool = run.dataset("pool")
    examples = run.encoded("pool")
    tokens = sum(e.length for e in examples)
    with run.timed("score", "frs", tokens):
        result = frs_scores(
            assets.graphdef,
            assets.state,
            assets.sae,
            assets.sae_cfg,
            examples,
            kept,
            hook_name=assets.hook_name,
            aggregate=cfg.score.aggregate,
            tokens=cfg.score.tokens,
            tokens_per_batch=cfg.data.tokens_per_batch,
            feature_stats=feature_stats,
            **run.batch_kwargs(),
        )
    if feature_stats:
        scores, run.memo["frs_feature_stats"] = result
    else:
        scores = result
    run_files.write_scores(
        run.run_dir / "scores.jsonl", pool.ids, scores, [e.length for e in examples]
    )
    run_files.update_summary(
        run.run_dir,
        "score",
        {
            "num_examples": len(scores),
            "num_features": len(kept),
            "aggregate": cfg.score.aggregate,
            "tokens": cfg.score.tokens,
            "num_zero_scores": int((scores == 0).sum()),
        },
    )
    return scores


def select(run: Run, scores_n: np.ndarray | None = None) -> Selection:
    """Select the top pool examples by FRS; write ``selection.jsonl`` / ``.parquet``.

    Without ``scores_n``, the scores come from ``scores.jsonl`` of an earlier score step.
    """
    pool = run.dataset("pool")
    lengths = run.encoded_lengths("pool")
    if scores_n is None:
        scores_n, lengths = run_files.read_scores(run.run_dir / "scores.jsonl", pool.ids)
    selection, counts = select_and_write(run, run.run_dir, pool, scores_n, token_counts_n=lengths)
    run_files.update_summary(run.run_dir, "select", counts)
    return selection


def run_all(run: Run) -> None:
    """Run identify, score, select and the configured baselines in one run directory."""
    cfg = run.cfg
    found = identify(run)
    scores = score(run, found.kept)
    select(run, scores)
    for name in cfg.baselines.names:
        run_baseline(run, name)


def stability(run: Run) -> dict[str, Any]:
    """Identify features on ``data.task`` and ``stability.other_task`` and compare them.

    Scores compared: the recall score (``use_causal=False``) or the causal delta of the
    candidates of either dataset, with features that are not candidates scoring 0. Writes
    ``stability.json``.
    """
    cfg = run.cfg
    if not cfg.stability.other_task:
        raise ValueError("stability.other_task is not set; pass the second task dataset")
    per_source = []
    for role, path in (("task", cfg.data.task), ("other_task", cfg.stability.other_task)):
        records = run.dataset(role, path).records
        if cfg.stability.use_causal:
            recall_records, dev = task_split(run, run.dataset(role, path))
        else:
            recall_records, dev = records, []
        recall = recall_on(run, f"recall_{role}", recall_records, section="stability")
        if not cfg.stability.use_causal:
            per_source.append(recall.scores_f)
            continue
        candidates = choose_candidates(run, recall)
        causal = validate_on(run, candidates, dev, name=f"{role}_dev")
        scores_f = np.zeros(run.assets().sae_cfg.d_sae)
        scores_f[causal.feature_ids] = causal.deltas_c
        per_source.append(scores_f)
    result = compare_feature_scores(per_source[0], per_source[1], top_k=cfg.stability.top_k)
    result.update(
        sources=[cfg.data.task, cfg.stability.other_task],
        score="causal_delta" if cfg.stability.use_causal else "recall_score",
    )
    (run.run_dir / "stability.json").write_text(json.dumps(result, indent=2) + "\n")
    run_files.update_summary(
        run.run_dir,
        "stability",
        {k: result[k] for k in ("jaccard", "spearman_union", "spearman_all", "top_k", "score")},
    )
    logger.info(
        "stability: Jaccard %.3f, Spearman %.3f over the top-%d union",
        result["jaccard"],
        result["spearman_union"],
        cfg.stability.top_k,
    )
    return result
