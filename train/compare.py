"""Compare selection methods: fine-tune on each selection and on the full pool, score all.

For one model and task, ``run_compare`` fine-tunes with the same config on the full pool
(``data.train``, row ``compare.full_name``) and on every selection file in
``compare.selections`` (IGDS and the baselines at one fraction). It then scores each run on
the same ``data.test`` (generation metrics) and ``data.eval`` (held-out loss), and
optionally the base model before any fine-tuning.

Every run uses the same settings, epochs included, so a selection of half the pool trains
for half as many steps as the full pool. Set ``loop.max_steps`` to give every run the same
number of steps instead.

Outputs in ``out_dir``: one run directory per method (a finished one, with ``eval/eval.json``,
is reused on a rerun if its training file is unchanged, and an unfinished one resumes from
its checkpoint), ``results.json``
and ``results.md``. The table has one row per method and one column per metric, then one
column per metric with the relative change against the full-pool run, ``100 * (value -
full) / |full|`` percent. For ``eval_loss`` lower is better, so a negative change is a gain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.loading import LoadedModel, abstract_model, load_model, resolve_dtype
from train.config import FinetuneConfig, validate
from train.config_io import save_resolved
from train.evaluate import evaluate_model
from train.loop import run_finetune
from train.params import unflatten_state
from train.record_files import data_sha256

logger = logging.getLogger(__name__)

METRIC_ORDER = ("math_accuracy", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "eval_loss")
BASE_ROW = "base"


def _count_lines(path: str) -> int | None:
    if not path.endswith(".jsonl"):
        return None
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def relative_change(value: float, reference: float) -> float | None:
    """Return ``100 * (value - reference) / |reference|``, or None when reference is 0."""
    if reference == 0:
        return None
    return 100.0 * (value - reference) / abs(reference)


def results_table(
    rows: Mapping[str, Mapping[str, Any]], full_name: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """Return the metric names and one table row per method, with relative changes."""
    present = {k for row in rows.values() for k in row}
    metrics = [m for m in METRIC_ORDER if m in present]
    full = rows.get(full_name, {})
    table = []
    for method, row in rows.items():
        out: dict[str, Any] = {"method": method, "num_train": row.get("num_train")}
        for m in metrics:
            out[m] = row.get(m)
        for m in metrics:
            both = m in row and m in full
            out[f"{m}_change_pct"] = relative_change(row[m], full[m]) if both else None
        table.append(out)
    return metrics, table


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_markdown(metrics: list[str], table: list[dict[str, Any]], full_name: str) -> str:
    """Render the results table in Markdown, with a caption naming the reference row."""
    header = ["method", "examples"] + metrics + [f"{m} vs {full_name} (%)" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["method"], _cell(row["num_train"])]
        cells += [_cell(row[m]) for m in metrics]
        cells += [_cell(row[f"{m}_change_pct"], 3) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"Relative change is 100 * (value - {full_name}) / |{full_name}|; for eval_loss, "
        "lower is better."
    )
    return "\n".join(lines) + "\n\n" + caption + "\n"


def run_compare(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and score every method; return ``{"metrics", "rows"}`` as in results.json."""
    validate(cfg)
    if not cfg.data.test and not cfg.data.eval:
        raise ValueError("compare needs data.test and/or data.eval to score the runs on")
    for name, path in cfg.compare.selections.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"selection {name!r}: file {path} not found")
    if cfg.compare.full_name in cfg.compare.selections or BASE_ROW in cfg.compare.selections:
        raise ValueError(
            f"selection names must differ from {cfg.compare.full_name!r} and {BASE_ROW!r}"
        )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir / "config.yaml")
    base = load_model(cfg.model, dtype=resolve_dtype(cfg.loop.param_dtype))

    rows: dict[str, dict[str, Any]] = {}
    if cfg.compare.include_base:
        rows[BASE_ROW] = _score_base(cfg, base, out_dir / BASE_ROW)
        rows[BASE_ROW]["num_train"] = 0
    methods = {cfg.compare.full_name: cfg.data.train, **cfg.compare.selections}
    for name, path in methods.items():
        run_dir = out_dir / name
        done = run_dir / "eval" / "eval.json"
        if done.exists():
            _check_same_data(name, path, run_dir)
            logger.info("compare: %s is already scored in %s; reusing it", name, done)
            rows[name] = json.loads(done.read_text())
        else:
            logger.info("compare: fine-tuning %s on %s", name, path)
            run_cfg = dataclasses.replace(
                cfg,
                out_dir=str(run_dir),
                data=dataclasses.replace(cfg.data, train=path),
                eval=dataclasses.replace(cfg.eval, at_end=False),
            )
            result = run_finetune(run_cfg, model=base)
            if result.interrupted:
                raise RuntimeError(f"run {name!r} was interrupted; rerun compare to resume it")
            state = _state(base, result.params)
            rows[name] = evaluate_model(
                base.graphdef, state, base.tokenizer, base.config, cfg, run_dir / "eval"
            )
        run_info = run_dir / "run.json"
        if run_info.exists():
            rows[name]["num_train"] = json.loads(run_info.read_text())["num_examples"]
        else:
            rows[name]["num_train"] = _count_lines(path)

    metrics, table = results_table(rows, cfg.compare.full_name)
    report = {"metrics": metrics, "rows": table, "full_name": cfg.compare.full_name}
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(render_markdown(metrics, table, cfg.compare.full_name))
    logger.info("compare: wrote %s and %s", out_dir / "results.md", out_dir / "results.json")
    return report


def _check_same_data(name: str, path: str, run_dir: Path) -> None:
    """Raise ValueError when a finished run was trained on other data than ``path`` now contains."""
    info_path = run_dir / "run.json"
    saved = json.loads(info_path.read_text()).get("train_sha256") if info_path.exists() else None
    if saved is None:
        logger.warning(
            "compare: %s has no training-data checksum in %s (written by an older version); "
            "reusing it without checking that %s is unchanged",
            name,
            info_path,
            path,
        )
        return
    current = data_sha256(path)
    if saved != current:
        raise ValueError(
            f"compare: run {name!r} in {run_dir} was trained on a different {path} "
            f"(sha256 {saved[:12]}... then, {current[:12]}... now); delete {run_dir} "
            "to retrain it, or use a new out_dir"
        )


def _state(model: LoadedModel, params: Mapping[str, Any]) -> Any:
    _, template = abstract_model(model.config, resolve_dtype("float32"))
    return unflatten_state(template, params)


def _score_base(cfg: FinetuneConfig, base: LoadedModel, run_dir: Path) -> dict[str, Any]:
    done = run_dir / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    return evaluate_model(base.graphdef, base.state, base.tokenizer, base.config, cfg, run_dir)
