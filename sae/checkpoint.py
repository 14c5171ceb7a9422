"""Orbax checkpoints of an SAE training run: train state, shuffle buffer, JSON metadata."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from sae.buffer import ActivationBuffer
from sae.train_step import TrainState

logger = logging.getLogger(__name__)


class TrainCheckpointer:
    """Orbax CheckpointManager for (train state, buffer rows, JSON metadata)."""

    def __init__(self, directory: str, keep: int):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=options,
            item_names=("state", "buffer", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, buffer: ActivationBuffer, meta: dict) -> None:
        rows, position = buffer.state()
        if (
            len(rows) == 0
        ):  # Orbax cannot save empty arrays, so save one dummy row; meta["buffer_rows"] is 0.
            rows = np.zeros((1, rows.shape[1]), np.float32)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            buffer=ocp.args.StandardSave({"rows": rows}),
            meta=ocp.args.JsonSave({**meta, "buffer": position}),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()
        logger.info("saved checkpoint at step %d to %s", step, self.manager.directory)

    def restore_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore_arrays(self, step: int, abstract_state: TrainState, n_rows: int, d_in: int):
        rows_target = {"rows": np.zeros((max(n_rows, 1), d_in), np.float32)}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                buffer=ocp.args.StandardRestore(rows_target),
            ),
        )
        return restored["state"], np.asarray(restored["buffer"]["rows"])[:n_rows]

    def close(self) -> None:
        self.manager.close()
