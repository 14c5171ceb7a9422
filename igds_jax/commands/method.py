"""``igds identify | score | select | baseline | run | stability``: the IGDS method steps.

Every command reads a YAML config (``igds_jax.method_config.MethodConfig``), applies
``--set section.field=value`` overrides, writes into ``run_dir`` (log, resolved config,
summary, report) and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import logging
import textwrap

logger = logging.getLogger(__name__)

COMMANDS = {
    "identify": "find the task's SAE features: frequency recall, then causal validation",
    "score": "score every pool example by its Feature-Resonant Score over the kept features",
    "select": "keep the top pool examples by score and write them as JSONL/Parquet",
    "baseline": "score and select the pool with a baseline: random, loss, ifd or zip",
    "run": "identify, score, select and the configured baselines in one go",
    "stability": "compare the features found on two source datasets of one task",
}


def _epilog() -> str:
    from igds_jax.method_config import describe_fields

    lines = ["config fields (set in the YAML file or with --set):"]
    for line in describe_fields():
        lines.extend(textwrap.wrap(line, 96, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    epilog = _epilog()
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "baseline":
            p.add_argument(
                "name",
                choices=["random", "loss", "ifd", "zip"],
                help="baseline method; writes into RUN_DIR/baselines/NAME",
            )
        p.add_argument("config", help="YAML config file (see the fields below)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config field, e.g. --set causal.alpha=8 (value parsed as "
            "YAML; repeatable)",
        )
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop at the first malformed input row instead of skipping it and counting "
            "the reason in summary.json (sets data.strict=true)",
        )
        p.set_defaults(func=run_command, method_command=name)


def run_command(args: argparse.Namespace) -> int:
    from igds_jax import baseline_runs, pipeline, report, run_context, run_files
    from igds_jax.method_config import MethodConfig
    from train.config_io import load_config

    cfg = load_config(MethodConfig, args.config, args.overrides)
    if args.strict:
        cfg.data.strict = True
    name = args.method_command
    run = run_context.start(cfg)
    with run_files.log_to_file(run.run_dir):
        logger.info("igds %s %s (run_dir %s)", name, args.config, run.run_dir)
        if name == "run":
            pipeline.run_all(run)
        elif name == "identify":
            pipeline.identify(run)
        elif name == "score":
            pipeline.score(run)
        elif name == "select":
            pipeline.select(run)
        elif name == "baseline":
            baseline_runs.run_baseline(run, args.name)
        elif name == "stability":
            pipeline.stability(run)
        path = report.write_report(run.run_dir)
    print(f"wrote {path}")
    return 0
