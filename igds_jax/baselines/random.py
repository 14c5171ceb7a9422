"""Random baseline: a seeded score per example that does not depend on pool order.

Each example's score is ``u = h / 2**53`` in ``[0, 1)``, where ``h`` is the first 53 bits of
``SHA-256(f"{seed}:{id}")`` (UTF-8). Selecting the top fraction by this score is a uniform
random sample for a given seed, and the same example gets the same score in any pool order
and on any host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def random_score(example_id: str, seed: int) -> float:
    """Return the Random baseline score of one example."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def random_scores(ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """Return ``[n]`` float64 Random baseline scores for the given example ids."""
    return np.asarray([random_score(str(i), seed) for i in ids], dtype=np.float64)
