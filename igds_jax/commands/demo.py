"""``igds demo``: the README's main job, IGDS end to end on the packaged SmolLM2 model.

The work happens in ``igds_jax.demo``; this module parses the arguments and prints the key
figures.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="IGDS on SmolLM2-135M-Instruct for math, offline: SAE, features, selection",
        description="Fetch the pinned PyPI assets, build math (or translation) records split "
        "by template and a mixed candidate pool, train the SAE at blocks.15.hook_resid_post "
        "(cached after the first run), identify and validate task features, select half the "
        "pool by FRS and by the Random, Loss, IFD and ZIP baselines, and write report.md.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="demo YAML config (default: configs/demo_math.yaml of this checkout)",
    )
    p.add_argument("--out", default=None, help="run directory (default: out_dir of the config)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set data.pool_other=400 or --set "
        "method.causal.alpha=8 (value parsed as YAML; repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the SAE training progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from igds_jax.demo import run_demo
    from igds_jax.demo_config import DEFAULT_CONFIG, DemoConfig
    from train.config_io import load_config

    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    cfg = load_config(DemoConfig, path, args.overrides)
    if args.out is not None:
        cfg.out_dir = args.out
    demo = run_demo(cfg, progress=not args.no_progress)
    task = cfg.data.task
    kept = demo.get("kept_features", [])
    print(f"kept {len(kept)} validated features: {kept}")
    shares = ", ".join(f"{m} {100 * s:.1f} %" for m, s in demo.get("task_share", {}).items())
    print(f"{task} share of the pool {100 * demo['pool_task_share']:.1f} %; selections: {shares}")
    times = demo["timings_s"]
    print(f"sae: {demo['sae']['source']}; total {times['total']:.0f} s ({times})")
    print(f"wrote {cfg.out_dir}/report.md")
    return 0
