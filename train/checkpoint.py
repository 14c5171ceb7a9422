"""Orbax checkpoints of a fine-tuning run, resumable at the exact step and batch.

A checkpoint at step ``s`` (after ``s`` optimizer updates) contains two items:

- ``state``: the trainable tree (full params or LoRA adapters), the optimizer state and the
  run's PRNG key data, saved with ``StandardSave`` (each array keeps its sharding on
  restore).
- ``meta``: JSON with the step, the data position (epoch and step within it), the token
  count so far and a fingerprint of everything that decides the batch order. Resuming
  with a different fingerprint raises, because the data order would silently change.

The frozen base weights of a LoRA run are not saved; they are reloaded from the model path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class Checkpointer:
    """Save and restore train state under ``directory/<step>``, keeping the newest few."""

    def __init__(self, directory: str | Path, *, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``state`` (a pytree of arrays) and ``meta`` (JSON) as step ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        logger.info("checkpoint: saving step %d to %s", step, self.directory)

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restore step ``step``; ``like`` gives the tree structure, shapes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        logger.info("checkpoint: restored step %d from %s", step, self.directory)
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_fingerprint(meta: dict[str, Any], fingerprint: dict[str, Any], directory: Path) -> None:
    """Raise ValueError when a checkpoint was written for another data order or model."""
    saved = meta.get("fingerprint", {})
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        details = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs now {fingerprint.get(k)!r}" for k in changed
        )
        raise ValueError(
            f"{directory}: the checkpoint was written by a run with different settings "
            f"({details}); use a new out_dir, or set loop.resume=false to start over"
        )
