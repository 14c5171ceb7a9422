"""Multi-process runs: start ``jax.distributed`` and split a corpus between processes.

Start-up (:func:`initialize`) takes the coordinator address, the process count and this
process's id from arguments, else from the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. With none of them set, a SLURM or Open MPI job
of more than one task is detected by JAX itself, and anything else runs as one process
without starting the distributed runtime. ``jax.distributed.initialize`` must run before
the first JAX computation, so call :func:`initialize` first thing in a program.

Corpus split (:func:`owns_example`): example ``i`` (its 0-based position among the valid
records of the corpus) belongs to process ``i % num_processes``. The split depends only on
the index, so every process computes it alone and the union over processes is exactly the
corpus. Striding rather than cutting contiguous blocks keeps the processes balanced when a
corpus is ordered by length or source. Every process parses every row, because duplicate
ids and the index of each valid record are only known in file order, but it tokenizes and
scores only its own examples.

Collectives between processes (:func:`barrier`, :func:`allgather_int`) go through
``jax.experimental.multihost_utils``; on CPU they use Gloo, JAX's default CPU collectives
implementation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import jax
import numpy as np

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in a run."""

    process_id: int
    num_processes: int
    distributed: bool  # whether the jax.distributed runtime is running

    @property
    def is_main(self) -> bool:
        return self.process_id == 0


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def _cluster_job_size() -> int:
    """Task count of a SLURM or Open MPI job around this process (1 outside one)."""
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = _env_int(name)
        if value is not None:
            return value
    return 1


def current_process() -> ProcessInfo:
    """Return this process's id and the process count without starting anything."""
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.distributed.is_initialized())


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> ProcessInfo:
    """Start ``jax.distributed`` when arguments, environment or a cluster job ask for it.

    Returns the process's id and count (``0`` of ``1`` for a single-process run). Calling it
    again after the runtime is up returns the running configuration. Raises ValueError when
    only some of the three settings are given or they contradict each other.
    """
    if jax.distributed.is_initialized():
        return current_process()
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)

    given = {
        "coordinator address": coordinator_address,
        "number of processes": num_processes,
        "process id": process_id,
    }
    if all(v is None for v in given.values()):
        if _cluster_job_size() > 1:
            logger.info("starting jax.distributed from the cluster environment")
            jax.distributed.initialize(initialization_timeout=timeout_s)
            return current_process()
        return ProcessInfo(0, 1, False)
    if num_processes == 1 and coordinator_address is None:
        return ProcessInfo(0, 1, False)
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"multi-process run is missing the {', '.join(missing)}; pass all of "
            f"--coordinator, --num-processes and --process-id (or set {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is outside 0..{num_processes - 1}")
    logger.info(
        "starting jax.distributed: process %d of %d, coordinator %s",
        process_id,
        num_processes,
        coordinator_address,
    )
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout_s,
    )
    return current_process()


def shutdown() -> None:
    """Stop the distributed runtime if it runs (a no-op for single-process runs)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def owns_example(index: int, process_id: int, num_processes: int) -> bool:
    """Return whether example ``index`` belongs to ``process_id`` (strided split)."""
    return index % num_processes == process_id


def process_shard(
    items: Iterable[tuple[int, T]], process_id: int, num_processes: int
) -> Iterator[tuple[int, T]]:
    """Yield the ``(index, item)`` pairs of ``items`` that belong to ``process_id``."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is outside 0..{num_processes - 1}")
    for index, item in items:
        if owns_example(index, process_id, num_processes):
            yield index, item


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather_int(values: list[int]) -> np.ndarray:
    """Gather one list of integers per process into ``[num_processes, len(values)]``.

    Values travel as int32 (JAX's default integer width without ``jax_enable_x64``).
    """
    if any(abs(v) >= 2**31 for v in values):
        raise ValueError(f"allgather_int carries int32 values, got {values}")
    local = np.asarray(values, dtype=np.int32)
    if jax.process_count() == 1:
        return local[None]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(local)
    return np.asarray(gathered).reshape(jax.process_count(), -1)
