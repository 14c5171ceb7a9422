"""``igds sae train`` and ``igds sae eval``: train an SAE on a model's activations, score one.

The work happens in ``igds_jax.sae_pipeline``; this module only parses arguments and prints
the result.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sae",
        help="train an SAE on model activations, or evaluate one",
        description="Train a TopK SAE at one hook of a model, or measure an SAE's L0, FVU, "
        "dead features and spliced-in loss on held-out text.",
    )
    sae_sub = p.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")

    train = sae_sub.add_parser(
        "train",
        help="train (or resume) an SAE from a YAML config",
        description="Load the model, stream activations at the config's hook over its texts, "
        "train the SAE (resuming from train.checkpoint_dir when it holds a checkpoint of the "
        "same config), then evaluate it on held-out documents and write the SAE (SAELens "
        "format) and metrics.json to train.output_dir.",
    )
    train.add_argument("config", help="YAML file, e.g. configs/sae_demo.yaml")
    _common(train)
    train.set_defaults(func=run_train)

    ev = sae_sub.add_parser(
        "eval",
        help="measure L0, FVU, dead features and spliced-in loss of an SAE",
        description="Evaluate an SAE (SAELens, Gemma Scope or Llama Scope) on held-out "
        "documents. Text settings default to those in the SAE's metrics.json, if it was "
        "trained here.",
    )
    ev.add_argument("--sae", required=True, help="SAE directory (or Gemma Scope params.npz)")
    ev.add_argument(
        "--model",
        default=None,
        help="HF model directory or .gguf file (default: the training run's model, else the "
        "packaged SmolLM2-135M-Instruct)",
    )
    ev.add_argument("--texts", default=None, help="'demo' or a local text/records file")
    ev.add_argument("--hook", default=None, help="hook point (default: the SAE's hook_name)")
    ev.add_argument("--out", default=None, help="output JSON (default: <sae dir>/eval.json)")
    _common(ev)
    ev.set_defaults(func=run_eval)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.steps=200 or --set eval.docs=32",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _summary(eval_metrics: dict) -> str:
    text = (
        f"held-out ({eval_metrics['tokens']} tokens): L0 {eval_metrics['l0']:.1f}, "
        f"FVU {eval_metrics['fvu']:.3f}, dead {eval_metrics['dead_fraction']:.3f}"
    )
    spliced = eval_metrics.get("spliced")
    if spliced:
        text += (
            f"; loss {spliced['loss']:.3f} -> {spliced['loss_spliced']:.3f} with the SAE "
            f"spliced in (+{spliced['loss_increase']:.3f})"
        )
    return text


def run_train(args: argparse.Namespace) -> int:
    from igds_jax.sae_pipeline import train_sae_pipeline

    result = train_sae_pipeline(args.config, args.overrides, progress=not args.no_progress)
    print(_summary(result.metrics["eval"]))
    output_dir = result.metrics["train_config"].get("output_dir")
    if output_dir:
        print(f"SAE and metrics.json in {output_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from igds_jax.sae_pipeline import evaluate_sae_dir

    overrides = list(args.overrides)
    if args.model is not None:
        overrides.insert(0, f"model={args.model}")
    if args.texts is not None:
        overrides.insert(0, f"texts={args.texts}")
    report = evaluate_sae_dir(
        args.sae, overrides, hook_name=args.hook, out=args.out, progress=not args.no_progress
    )
    print(_summary(report["eval"]))
    return 0
