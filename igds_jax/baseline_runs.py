"""The ``igds baseline NAME`` step: Random, Loss, IFD or ZIP scores and their selection.

Each baseline writes ``baselines/<name>/scores.jsonl`` and the selection files there, and
its counts under ``baselines.<name>`` in ``summary.json``. Random and ZIP need no model;
Loss and IFD run the base model over the pool (``igds_jax.model_baselines``); within one
command they share the prompt-conditioned response losses, so running both costs one
conditioned pass plus IFD's response-alone pass. ZIP
compresses ``prompt + "\\n" + response`` of each example and selects as many examples as
the selection keeps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from igds_jax import run_files
from igds_jax.baselines import ifd_scores, loss_scores, random_scores, zip_select
from igds_jax.method_config import BASELINES
from igds_jax.model_baselines import ifd_losses, mean_response_losses
from igds_jax.run_context import Run, select_and_write, selection_size
from igds_jax.selection import Selection

logger = logging.getLogger(__name__)

# run.memo key of the pool's prompt-conditioned mean response losses
_POOL_LOSSES = "pool_response_losses"


def _conditioned_losses(run: Run, examples: list, kwargs: dict) -> np.ndarray:
    """Return the pool's mean response losses given its prompts, computed once per command."""
    if _POOL_LOSSES not in run.memo:
        assets = run.assets()
        run.memo[_POOL_LOSSES] = mean_response_losses(
            assets.graphdef, assets.state, examples, **kwargs
        )
    return run.memo[_POOL_LOSSES]


def _model_scores(run: Run, name: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    assets = run.assets()
    examples = run.encoded("pool")
    kwargs = dict(tokens_per_batch=run.cfg.data.tokens_per_batch, **run.batch_kwargs())
    tokens = sum(e.length for e in examples)
    if name == "loss":
        with run.timed("baselines", "loss", tokens):
            losses = _conditioned_losses(run, examples, kwargs)
        return loss_scores(losses), {"loss": losses}, {}
    reused = _POOL_LOSSES in run.memo
    with run.timed("baselines", "ifd", tokens if reused else 2 * tokens):
        cond, uncond = ifd_losses(
            assets.graphdef,
            assets.state,
            examples,
            bos_token_id=assets.tokenizer.bos_token_id,
            conditioned=_conditioned_losses(run, examples, kwargs),
            **kwargs,
        )
    scores = ifd_scores(cond, uncond, max_ifd=run.cfg.baselines.max_ifd)
    info = {"max_ifd": run.cfg.baselines.max_ifd, "num_above_max_ifd": int(np.isinf(scores).sum())}
    return scores, {"loss_conditioned": cond, "loss_alone": uncond}, info


def run_baseline(run: Run, name: str) -> Selection:
    """Score the pool with baseline ``name`` and write its scores and selection."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    cfg = run.cfg
    pool = run.dataset("pool")
    extra: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    if name == "random":
        scores = random_scores(pool.ids, cfg.seed)
        info["seed"] = cfg.seed
    elif name == "zip":
        budget = selection_size(cfg, len(pool.records))
        texts = [f"{r.prompt}\n{r.response}" for r in pool.records]
        with run.timed("baselines", "zip"):
            result = zip_select(
                texts,
                pool.ids,
                budget,
                k1=cfg.baselines.zip_k1,
                k2=cfg.baselines.zip_k2,
                k3=cfg.baselines.zip_k3,
            )
        scores = result.scores_n
        info.update(k1=cfg.baselines.zip_k1, k2=cfg.baselines.zip_k2, k3=cfg.baselines.zip_k3)
    else:
        scores, extra, info = _model_scores(run, name)

    out_dir = run.run_dir / "baselines" / name
    lengths = run.encoded_lengths("pool")
    run_files.write_scores(out_dir / "scores.jsonl", pool.ids, scores, lengths, extra)
    selection, counts = select_and_write(run, out_dir, pool, scores, token_counts_n=lengths)
    run_files.update_summary(run.run_dir, "baselines", {name: {**counts, **info}})
    return selection
