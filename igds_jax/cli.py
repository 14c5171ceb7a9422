"""The ``igds`` command line.

Each subcommand lives in ``igds_jax/commands/<name>.py`` with a ``register(subparsers)``
function; heavy imports happen inside the command, so ``igds --help`` stays fast. User
errors (bad paths, bad configs, bad data) print one line and exit with status 2; pass
``--debug`` for the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "igds_jax.commands.demo",
    "igds_jax.commands.generate",
    "igds_jax.commands.sae",
    "igds_jax.commands.method",
    "igds_jax.commands.train",
    "igds_jax.commands.scale",
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igds",
        description="Interpretability-Guided Data Selection: find a task's SAE features and "
        "select the fine-tuning data that activates them.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default: INFO)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # JAX logs a failed TPU probe at INFO on every CPU-only start.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # orbax logs every checkpoint manager option at INFO through absl; keep its warnings.
    if args.log_level != "DEBUG":
        logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("igds: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        PermissionError,
        RuntimeError,
    ) as err:
        if args.debug:
            raise
        print(f"igds: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
