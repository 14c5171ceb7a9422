"""Device meshes, parameter and batch shardings, and sharded jit for scoring.

Mesh axes:

- ``data``: batch rows are split over it. Every device on one ``data`` slice gets the same
  rows.
- ``model``: large weight matrices are split over it, Megatron style. Column-parallel
  kernels (``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj``, stored ``[in,
  out]``) are split on their output axis and row-parallel kernels (``o_proj``,
  ``down_proj``) on their input axis, so one attention block or MLP needs a single
  all-reduce. Embedding tables are split on the vocabulary axis. Norm weights, biases of
  row-parallel layers and anything whose axis does not divide evenly are replicated.

XLA's SPMD partitioner (GSPMD) inserts the collectives, so the model code stays unchanged:
a sharding only moves work and memory, never the result beyond float rounding. The mesh
uses ``AxisType.Auto`` for both axes, so ``jax.jit`` with ``in_shardings`` and
``out_shardings`` propagates shardings through the model as in classic GSPMD.
``jax.pmap`` is not used because it is in maintenance mode since JAX 0.8.

Multi-process runs: :func:`make_mesh` over ``jax.local_devices()`` gives a per-process mesh
(what the scoring engine uses, since scoring is embarrassingly parallel); over
``jax.devices()`` it spans every process, and :func:`put_batch` then builds the global
batch from each process's rows with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from models.config import ModelConfig

logger = logging.getLogger(__name__)

AXES = ("data", "model")

# Linear layers whose output features are split over 'model' (and whose bias follows).
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
# Linear layers whose input features are split over 'model'; XLA all-reduces the output.
ROW_PARALLEL = ("o_proj", "down_proj")
# Vocabulary-indexed tables; the learned position table of GPT-2 stays replicated.
VOCAB_TABLES = ("embed_tokens", "lm_head")


def make_mesh(
    shape: Sequence[int] | None = None, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Build a ``('data', 'model')`` mesh of ``shape`` over ``devices``.

    ``shape`` is ``(data, model)``. One entry may be -1, meaning all remaining devices.
    ``None`` puts every device on ``data`` (pure data parallelism). ``devices`` defaults to
    ``jax.devices()``. Raises ValueError when the shape does not match the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape is None:
        shape = (n, 1)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"mesh shape must be (data, model), got {shape}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape} is invalid; use positive sizes and at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if n % known:
            raise ValueError(f"mesh shape {shape} does not divide the {n} devices")
        shape = tuple(n // known if s == -1 else s for s in shape)
    if math.prod(shape) != n:
        raise ValueError(
            f"mesh shape {shape} needs {math.prod(shape)} devices but {n} are given; pass a "
            f"shape whose product is {n} (for example ({n}, 1))"
        )
    # jax.make_mesh orders devices for the physical topology (TPU rings) where it matters.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def model_axis_size(mesh: Mesh) -> int:
    return int(mesh.shape["model"])


def data_axis_size(mesh: Mesh) -> int:
    return int(mesh.shape["data"])


def _divisible(size: int, parts: int, heads: int | None) -> bool:
    """Return whether an axis of ``size`` splits into ``parts`` equal whole-head pieces."""
    if size % parts:
        return False
    return heads is None or heads % parts == 0


def param_partition_spec(
    path: str, shape: Sequence[int], model_size: int, config: ModelConfig | None = None
) -> PartitionSpec:
    """Partition spec of the parameter at ``path`` (e.g. ``layers.3.mlp.up_proj.kernel``).

    With ``config``, attention projections are split only when their head count divides by
    ``model_size``, so no head straddles two devices. Without it, only the axis size must
    divide.
    """
    if model_size == 1:
        return PartitionSpec()
    parts = path.split(".")
    module, leaf = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", parts[-1])
    heads = None
    if config is not None and module in ("q_proj", "o_proj"):
        heads = config.n_heads
    elif config is not None and module in ("k_proj", "v_proj"):
        heads = config.n_kv_heads

    if module in COLUMN_PARALLEL and leaf == "kernel" and len(shape) == 2:
        if _divisible(shape[1], model_size, heads):
            return PartitionSpec(None, "model")
    elif module in COLUMN_PARALLEL and leaf == "bias" and len(shape) == 1:
        if _divisible(shape[0], model_size, heads):
            return PartitionSpec("model")
    elif module in ROW_PARALLEL and leaf == "kernel" and len(shape) == 2:
        if _divisible(shape[0], model_size, heads):
            return PartitionSpec("model", None)
    elif module in VOCAB_TABLES and leaf == "weight" and len(shape) == 2:
        if shape[0] % model_size == 0:
            return PartitionSpec("model", None)
    else:
        return PartitionSpec()
    logger.debug("replicating %s %s: not divisible by model axis %d", path, shape, model_size)
    return PartitionSpec()


def param_sharding(
    mesh: Mesh, path: str, shape: Sequence[int], config: ModelConfig | None = None
) -> NamedSharding:
    return NamedSharding(mesh, param_partition_spec(path, shape, model_axis_size(mesh), config))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array, which every process has in full, onto ``sharding``.

    Works for meshes that span several processes, where ``jax.device_put`` of a NumPy
    array would need every device to be addressable.
    """
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def make_placer(
    mesh: Mesh, config: ModelConfig | None = None
) -> Callable[[str, np.ndarray], jax.Array]:
    """Return ``place(path, array)`` for ``models.loading.load_model(place=...)``.

    Each parameter goes straight from the checkpoint reader to its shards, so no device
    ever stores a full copy of a split matrix.
    """

    def place(path: str, array: np.ndarray) -> jax.Array:
        return put_global(array, param_sharding(mesh, path, np.shape(array), config))

    return place


def shard_state(state: nnx.State, mesh: Mesh, config: ModelConfig | None = None) -> nnx.State:
    """Return ``state`` with every parameter moved to its sharding on ``mesh``."""
    flat = []
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        value = var.get_value()
        sharding = param_sharding(mesh, name, value.shape, config)
        flat.append((path, var.replace(put_global(np.asarray(value), sharding))))
    return nnx.from_flat_state(flat)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every array leaf of ``tree`` (e.g. SAE weights) to all devices of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda leaf: put_global(np.asarray(leaf), sharding), tree)


def shardings_of(tree: Any) -> Any:
    """Return the sharding of every array leaf, as a tree for ``jax.jit(in_shardings=...)``."""
    return jax.tree.map(lambda leaf: leaf.sharding, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows over ``data``; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def _spans_processes(mesh: Mesh) -> bool:
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def _local_data_slices(mesh: Mesh) -> int:
    """Number of positions on the ``data`` axis that hold a device of this process."""
    me = jax.process_index()
    rows = mesh.devices.reshape(data_axis_size(mesh), -1)
    return sum(any(d.process_index == me for d in row) for row in rows)


def put_batch(mesh: Mesh, arrays: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Put host batch arrays ``{name: [B, ...]}`` on ``mesh`` with rows split over ``data``.

    On a mesh of local devices, ``B`` is the whole batch. On a mesh spanning processes, it
    is this process's rows, and the global batch stacks the rows of every process in
    process order. Raises ValueError when the rows do not split evenly.
    """
    spans = _spans_processes(mesh)
    local_parts = _local_data_slices(mesh) if spans else data_axis_size(mesh)
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.shape[0] % local_parts:
            raise ValueError(
                f"batch array {name!r} has {value.shape[0]} rows, not a multiple of the "
                f"{local_parts} data shards of this process; pad the batch rows"
            )
        sharding = batch_sharding(mesh, value.ndim)
        if spans:
            out[name] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[name] = jax.device_put(value, sharding)
    return out


def local_rows(array: jax.Array) -> np.ndarray:
    """Rows of a ``data``-sharded output that belong to this process, in row order."""
    if array.is_fully_addressable:
        return np.asarray(array)
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:  # devices on one data slice hold the same rows
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows, axis=0)


def sharded_jit(
    fn: Callable[..., Any],
    mesh: Mesh,
    params: Any,
    batch_ndims: Mapping[str, int],
    *,
    out_ndim: int = 1,
) -> Callable[[Any, Mapping[str, jax.Array]], Any]:
    """``jax.jit(fn)`` for ``fn(params, batch) -> outputs`` with explicit shardings.

    ``params`` keep the shardings they already have (see :func:`make_placer`,
    :func:`shard_state`, :func:`replicate`), the batch arrays named in ``batch_ndims`` are
    split by rows over ``data``, and every output leaf (``out_ndim`` axes, rows first) comes
    back split over ``data`` too, so no device gathers the whole result.
    """
    in_shardings = (
        shardings_of(params),
        {name: batch_sharding(mesh, ndim) for name, ndim in batch_ndims.items()},
    )
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=batch_sharding(mesh, out_ndim))
