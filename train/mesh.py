"""A device mesh with axes ``('data', 'model')`` and the shardings built on it.

- ``data``: batches are split over this axis (data parallelism); each device sees
  ``rows / data`` rows of every batch.
- ``model``: parameters may be split over this axis (``shard_params``); the compiler
  inserts the collectives.

On one CPU the mesh is ``1 x 1`` and every sharding is a no-op, so the same code runs from a
laptop to a multi-device host.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

AXES = ("data", "model")


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """Build a ``data x model`` mesh; ``data=-1`` takes every device not used by ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1:
        raise ValueError(f"model={model}; the 'model' axis needs at least 1 device")
    if data == -1:
        if len(devices) % model:
            raise ValueError(
                f"{len(devices)} devices do not split into a 'model' axis of {model}; pass a "
                "model size that divides the device count"
            )
        data = len(devices) // model
    if data < 1 or data * model > len(devices):
        raise ValueError(
            f"mesh {data} x {model} needs {data * model} devices but {len(devices)} are "
            "available; lower mesh_data or mesh_model"
        )
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy of the whole array on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split axis ``batch_axis`` over 'data' and keep the others whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), "data"))


def param_spec(shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Split the last axis of a matrix over 'model', or its first when the last does not
    divide; vectors, and matrices where neither axis divides, are replicated."""
    size = mesh.shape["model"]
    if size == 1 or len(shape) < 2:
        return PartitionSpec()
    if shape[-1] % size == 0:
        return PartitionSpec(*([None] * (len(shape) - 1)), "model")
    if shape[0] % size == 0:
        return PartitionSpec("model", *([None] * (len(shape) - 1)))
    return PartitionSpec()


def param_shardings(
    shapes: Mapping[str, Sequence[int]], mesh: Mesh, mode: str = "replicated"
) -> dict[str, NamedSharding]:
    """Map each parameter path to its sharding: ``replicated`` or ``model`` (``param_spec``)."""
    if mode == "replicated":
        return {path: replicated(mesh) for path in shapes}
    if mode == "model":
        return {
            path: NamedSharding(mesh, param_spec(shape, mesh)) for path, shape in shapes.items()
        }
    raise ValueError(f"param sharding mode {mode!r} is unknown; use 'replicated' or 'model'")
