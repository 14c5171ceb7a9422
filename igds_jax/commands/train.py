"""``igds finetune``, ``igds evaluate`` and ``igds compare``: fine-tuning runs from YAML.

All three read one :class:`train.config.FinetuneConfig` file (see
``configs/finetune_tiny.yaml``) with ``--set section.field=value`` overrides.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

COMMANDS = {
    "finetune": (
        "fine-tune a model on (prompt, response) records",
        "Fine-tune cfg.model on data.train (full or LoRA), with checkpoints, metrics.jsonl, a "
        "loss plot and an HF export in out_dir. A rerun resumes from the newest checkpoint.",
    ),
    "evaluate": (
        "score a model on a test set (generation) and a held-out set (loss)",
        "Answer data.test greedily and score the answers (eval.metrics); compute the mean "
        "response-token loss on data.eval. Writes eval.json and predictions.jsonl.",
    ),
    "compare": (
        "fine-tune on the full pool and on each selection, then score all",
        "Fine-tune on data.train and on every file in compare.selections with the same "
        "settings, score each on data.test/data.eval, and write results.md and results.json.",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    for name, (short, description) in COMMANDS.items():
        p = sub.add_parser(name, help=short, description=description)
        p.add_argument("config", help="YAML config file, e.g. configs/finetune_tiny.yaml")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set loop.max_steps=100 (repeatable)",
        )
        if name == "evaluate":
            p.add_argument(
                "--out",
                default=None,
                help="output directory (default: <out_dir>/eval)",
            )
        p.set_defaults(func=globals()[f"run_{name}"])


def _load(args: argparse.Namespace):
    from train.config import FinetuneConfig
    from train.config_io import load_config

    return load_config(FinetuneConfig, args.config, args.overrides)


def run_finetune(args: argparse.Namespace) -> int:
    from train.loop import run_finetune as finetune

    result = finetune(_load(args))
    if result.interrupted:
        print(f"stopped at step {result.step} of {result.total_steps}; rerun to resume")
        return 130
    print(f"finished {result.step} steps; outputs in {result.out_dir}")
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from models.loading import load_model, resolve_dtype
    from train.config import validate
    from train.config_io import save_resolved
    from train.evaluate import evaluate_model

    cfg = _load(args)
    validate(cfg, need_train=False)
    out = Path(args.out) if args.out else Path(cfg.out_dir) / "eval"
    save_resolved(cfg, out / "config.yaml")
    model = load_model(cfg.model, dtype=resolve_dtype(cfg.loop.param_dtype))
    results = evaluate_model(model.graphdef, model.state, model.tokenizer, model.config, cfg, out)
    for key, value in results.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out / 'eval.json'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from train.compare import run_compare as compare

    cfg = _load(args)
    compare(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    return 0
