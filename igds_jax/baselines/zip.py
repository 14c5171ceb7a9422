"""ZIP baseline (Yin et al. 2024, "Entropy Law: The Story Behind Data Compression and LLM
Performance"): greedy selection of the least redundant examples.

Compression ratio of a list of examples ``S``: ``C(S) = len(b) / len(zlib.compress(b, 9))``
where ``b`` is the concatenation of each member's bytes in list order, and one member's bytes
are ``text.encode("utf-8") + b"\\n"``. Lower ``C`` means less redundancy, which ZIP prefers.

Procedure, following the authors' released ``ZIP_select`` code (which uses the defaults
K1 = 10000, K2 = 200, K3 = 100):

0. ``pi[x] = C([x])`` for every example ``x``. ``D'`` (the selection) starts empty.
1. Global stage: ``D_K1`` = the K1 available examples with the lowest ``pi``.
2. Local coarse stage: for every ``x`` in ``D_K1``, set ``pi[x] = C(D' + [x])``, with ``D'``
   in selection order and ``x`` last. ``D_K2`` = the K2 examples of ``D_K1`` with the lowest
   new ``pi``.
3. Local fine stage: ``D_K3`` starts empty. K3 times, add the ``x`` in ``D_K2 \\ D_K3`` with
   the lowest ``C(D_K3 + [x])``. This stage does not include ``D'``.
4. Append ``D_K3`` (in the order picked) to ``D'``. Repeat from 1 until ``|D'|`` reaches the
   budget. The last round is cut at the budget.

In the released code the K2 - K3 examples of ``D_K2`` that stage 3 did not pick keep the
sentinel ``pi = 1e6``, so later rounds skip them while at least K1 other examples remain.
``park_unpicked=True`` (default) reproduces that: such examples are parked, and return (with
their last ``pi``) only once no other example is available. ``park_unpicked=False`` returns
them to the pool at once. Differences from the released code, all at the edges:

- Stage sizes are capped by the number of available examples. Once fewer than K1 other
  examples remain, the released code lets sentinel examples back into stage 1, including
  already selected ones, which it can then select twice.
- Ties in ``pi`` or ``C`` are broken by example id, so the result does not depend on pool
  order (``torch.topk`` leaves tie order unspecified).
- The released code compresses Python's ``str()`` of a list of dicts. Here the members'
  texts are concatenated as above, so the ratio does not depend on Python's repr quoting.

Cost: stage 2 compresses ``D'`` once and continues a copy of the zlib stream for each
candidate, which yields the same bytes as compressing ``D' + [x]`` in one call (checked in
the tests), so a round costs about ``K1 + K2 * K3`` compressions of single examples.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

_LEVEL = 9


def member_bytes(text: str) -> bytes:
    """Return one example's bytes inside a compressed set: UTF-8 text plus a newline."""
    return text.encode("utf-8") + b"\n"


def compression_ratio(members: Sequence[bytes]) -> float:
    """Return ``len(b) / len(zlib.compress(b, 9))`` for ``b`` the concatenated members."""
    data = b"".join(members)
    return len(data) / len(zlib.compress(data, _LEVEL))


class _Prefix:
    """A zlib stream that has consumed a list of members and can be extended per candidate."""

    def __init__(self) -> None:
        self._stream = zlib.compressobj(_LEVEL)
        self._out = 0
        self._raw = 0

    def append(self, data: bytes) -> None:
        self._out += len(self._stream.compress(data))
        self._raw += len(data)

    def ratio_with(self, data: bytes) -> float:
        stream = self._stream.copy()
        out = self._out + len(stream.compress(data)) + len(stream.flush())
        return (self._raw + len(data)) / out


@dataclass(frozen=True)
class ZipResult:
    """ZIP output: the selection order and one score per pool example."""

    order: np.ndarray  # [budget] pool positions, in the order ZIP selected them
    scores_n: np.ndarray  # [n] float64: budget - position in order; -inf if not selected


def _lowest(keys: np.ndarray, ids: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Return the ``k`` candidates with the lowest key, ties by id, lowest first."""
    order = np.lexsort((ids[candidates], keys[candidates]))
    return candidates[order[:k]]


def zip_select(
    texts: Sequence[str],
    ids: Sequence[str],
    budget: int | None = None,
    *,
    k1: int = 10_000,
    k2: int = 200,
    k3: int = 100,
    park_unpicked: bool = True,
    num_threads: int = 1,
) -> ZipResult:
    """Run ZIP on a pool; see the module docstring for the exact procedure.

    Args:
      texts: the text of each example (for example prompt and response joined by a newline).
      ids: unique example ids, used to break ties.
      budget: number of examples to select; None ranks the whole pool. Set it at least as
        large as the number ``select_top`` will keep: unselected examples score ``-inf``.
      k1, k2, k3: stage sizes, with ``k1 >= k2 >= k3 >= 1``.
      park_unpicked: keep the stage-2 examples that stage 3 did not pick out of later rounds
        while other examples remain, as the released code does.
      num_threads: threads for the per-candidate compressions (zlib releases the GIL).

    Returns:
      A ``ZipResult``; ``scores_n`` feeds ``igds_jax.selection.select_top`` directly.
    """
    n = len(texts)
    if len(ids) != n:
        raise ValueError(f"texts has {n} entries but ids has {len(ids)}")
    if len(set(ids)) != n:
        raise ValueError("example ids must be unique")
    if not k1 >= k2 >= k3 >= 1:
        raise ValueError(f"need k1 >= k2 >= k3 >= 1, got k1={k1}, k2={k2}, k3={k3}")
    budget = n if budget is None else budget
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in [0, {n}], got {budget}")

    data = [member_bytes(t) for t in texts]
    ids_n = np.asarray([str(i) for i in ids], dtype=np.str_)
    pool = ThreadPoolExecutor(num_threads) if num_threads > 1 else None

    def ratios(prefix: _Prefix, members: np.ndarray) -> np.ndarray:
        work = [data[i] for i in members]
        out = pool.map(prefix.ratio_with, work) if pool else map(prefix.ratio_with, work)
        return np.fromiter(out, dtype=np.float64, count=len(work))

    pi = ratios(_Prefix(), np.arange(n))
    available = np.ones(n, dtype=bool)
    parked = np.zeros(n, dtype=bool)
    selected: list[int] = []
    selection_prefix = _Prefix()

    progress = tqdm(total=budget, desc="ZIP", unit="example", disable=budget < 10 * k3)
    try:
        while len(selected) < budget:
            candidates = np.flatnonzero(available & ~parked)
            if candidates.size == 0:
                parked[:] = False
                candidates = np.flatnonzero(available)

            # stage 1: global
            d_k1 = _lowest(pi, ids_n, candidates, min(k1, candidates.size))

            # stage 2: local coarse, against the current selection
            pi[d_k1] = ratios(selection_prefix, d_k1)
            d_k2 = _lowest(pi, ids_n, d_k1, min(k2, d_k1.size))

            # stage 3: local fine, greedy within d_k2
            remaining = d_k2
            d_k3: list[int] = []
            fine_prefix = _Prefix()
            fine = np.zeros(n, dtype=np.float64)
            for _ in range(min(k3, d_k2.size)):
                fine[remaining] = ratios(fine_prefix, remaining)
                best = int(_lowest(fine, ids_n, remaining, 1)[0])
                d_k3.append(best)
                fine_prefix.append(data[best])
                remaining = remaining[remaining != best]

            take = d_k3[: budget - len(selected)]
            for i in take:
                selection_prefix.append(data[i])
            selected.extend(take)
            available[take] = False
            if park_unpicked:
                parked[remaining] = True
            progress.update(len(take))
    finally:
        progress.close()
        if pool:
            pool.shutdown()

    order = np.asarray(selected, dtype=np.int64)
    scores = np.full(n, -np.inf)
    scores[order] = budget - np.arange(budget, dtype=np.float64)
    logger.info("ZIP selected %d of %d examples (k1=%d, k2=%d, k3=%d)", budget, n, k1, k2, k3)
    return ZipResult(order, scores)


def zip_scores(records: Sequence[Any], budget: int | None = None, **kwargs: Any) -> np.ndarray:
    """Return ZIP scores for records, each compressed as ``prompt + "\\n" + response``.

    ``kwargs`` go to ``zip_select``.
    """
    texts = [f"{r.prompt}\n{r.response}" for r in records]
    return zip_select(texts, [r.id for r in records], budget, **kwargs).scores_n
