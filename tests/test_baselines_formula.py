"""Baseline formulas: Random, Loss, IFD and ZIP against plain re-implementations."""

from __future__ import annotations

import hashlib
import string
import zlib

import numpy as np
import pytest

from igds_jax.baselines import (
    compression_ratio,
    ifd_scores,
    ifd_values,
    loss_scores,
    mean_masked_loss,
    random_scores,
    zip_scores,
    zip_select,
)
from igds_jax.baselines.zip import _Prefix, member_bytes
from igds_jax.selection import select_top
from train.records import Record

# ---------------------------------------------------------------------------- Random


def test_random_matches_documented_hash():
    ids = ["a", "b", "ex-17"]
    expected = [
        (int.from_bytes(hashlib.sha256(f"3:{i}".encode()).digest()[:8], "big") >> 11) / 2.0**53
        for i in ids
    ]
    assert random_scores(ids, seed=3).tolist() == expected


def test_random_stable_under_reordering():
    ids = [f"id{i}" for i in range(500)]
    scores = random_scores(ids, seed=7)
    chosen = {ids[i] for i in select_top(ids, scores, fraction=0.2).indices}
    reversed_ids = ids[::-1]
    reversed_selection = select_top(reversed_ids, random_scores(reversed_ids, seed=7), fraction=0.2)
    assert {reversed_ids[i] for i in reversed_selection.indices} == chosen


def test_random_seed_changes_selection_and_is_uniform():
    ids = [f"id{i}" for i in range(4000)]
    first, second = random_scores(ids, seed=0), random_scores(ids, seed=1)
    assert not np.array_equal(first, second)
    assert first.min() >= 0.0
    assert first.max() < 1.0
    assert abs(first.mean() - 0.5) < 0.02
    assert abs(np.mean(first < 0.25) - 0.25) < 0.03


# ---------------------------------------------------------------------------- Loss and IFD


def test_mean_masked_loss_hand_values():
    token_loss = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 0.5, 4.0]])
    mask = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], dtype=bool)
    # row 0: (2 + 3) / 2, row 1: (0.5 + 0.5) / 2
    assert mean_masked_loss(token_loss, mask).tolist() == [2.5, 0.5]


def test_mean_masked_loss_ignores_unmasked_nan():
    token_loss = np.array([[np.nan, 1.0, 3.0]])
    mask = np.array([[0, 1, 1]], dtype=bool)
    assert mean_masked_loss(token_loss, mask).tolist() == [2.0]


def test_mean_masked_loss_errors():
    with pytest.raises(ValueError, match="no masked tokens"):
        mean_masked_loss(np.ones((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))
    with pytest.raises(ValueError, match="non-finite"):
        mean_masked_loss(np.array([[1.0, np.inf]]), np.array([[1, 1]], dtype=bool))
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        mean_masked_loss(np.ones((2, 3)), np.ones((2, 4), dtype=bool))


def test_loss_baseline_keeps_highest():
    ids = ["a", "b", "c", "d"]
    scores = loss_scores(np.array([1.2, 3.4, 0.7, 3.4]))
    selection = select_top(ids, scores, count=2)
    assert [ids[i] for i in selection.indices] == ["b", "d"]
    with pytest.raises(ValueError, match="finite"):
        loss_scores(np.array([1.0, np.nan]))


def test_ifd_hand_values():
    conditioned = np.array([1.0, 2.0, 0.9, 3.0, 0.6])
    unconditioned = np.array([2.0, 1.0, 0.9, 0.0, 0.8])
    ifd = ifd_values(conditioned, unconditioned)
    assert ifd[:3].tolist() == [0.5, 2.0, 1.0]
    assert ifd[4] == pytest.approx(0.75)
    assert np.isnan(ifd[3])  # zero unconditioned loss: undefined

    scores = ifd_scores(conditioned, unconditioned)
    # IFD 2.0 > 1 and the undefined one are ineligible; IFD == 1 stays
    assert scores.tolist() == [0.5, -np.inf, 1.0, -np.inf, pytest.approx(0.75)]


def test_ifd_selection_drops_above_one():
    ids = ["a", "b", "c", "d", "e"]
    scores = ifd_scores(np.array([1.0, 2.0, 0.9, 3.0, 0.6]), np.array([2.0, 1.0, 0.9, 0.0, 0.8]))
    selection = select_top(ids, scores, fraction=1.0)
    assert [ids[i] for i in selection.indices] == ["c", "e", "a"]
    assert selection.num_ineligible == 2


def test_ifd_from_token_losses():
    # conditioned: response tokens at 2..3, unconditioned: the same tokens at 1..2
    cond = mean_masked_loss(np.array([[0.0, 9.0, 1.0, 2.0]]), np.array([[0, 0, 1, 1]], bool))
    alone = mean_masked_loss(np.array([[0.0, 2.0, 4.0]]), np.array([[0, 1, 1]], bool))
    assert ifd_values(cond, alone).tolist() == [0.5]


# ---------------------------------------------------------------------------- ZIP


def ratio_direct(texts):
    data = b"".join(t.encode("utf-8") + b"\n" for t in texts)
    return len(data) / len(zlib.compress(data, 9))


def reference_zip(texts, ids, budget, k1, k2, k3, park=True):
    """Plain ZIP: one-shot zlib per candidate set, Python sorts, ties by id."""

    def lowest(keys, candidates, k):
        return sorted(candidates, key=lambda i: (keys[i], ids[i]))[:k]

    pi = {i: ratio_direct([texts[i]]) for i in range(len(texts))}
    selected, parked = [], set()
    while len(selected) < budget:
        available = [i for i in range(len(texts)) if i not in selected and i not in parked]
        if not available:
            parked.clear()
            available = [i for i in range(len(texts)) if i not in selected]
        d_k1 = lowest(pi, available, k1)
        for x in d_k1:
            pi[x] = ratio_direct([texts[j] for j in selected] + [texts[x]])
        d_k2 = lowest(pi, d_k1, k2)
        d_k3 = []
        for _ in range(min(k3, len(d_k2))):
            rest = [x for x in d_k2 if x not in d_k3]
            fine = {x: ratio_direct([texts[j] for j in d_k3] + [texts[x]]) for x in rest}
            d_k3.append(lowest(fine, rest, 1)[0])
        selected += d_k3[: budget - len(selected)]
        if park:
            parked |= set(d_k2) - set(d_k3)
    return selected


def make_pool(n, seed):
    """Texts with uneven redundancy: some near-copies, some repetitive, some varied."""
    rng = np.random.default_rng(seed)
    words = ["eggs", "ducks", "sells", "market", "day", "three", "sixteen", "Janet", "bakes"]
    texts = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            text = " ".join(rng.choice(words, size=int(rng.integers(5, 60))))
        elif kind == 1:
            text = "".join(rng.choice(list(string.ascii_letters), size=int(rng.integers(20, 300))))
        else:
            text = texts[int(rng.integers(0, len(texts)))] + f" variant {i}"
        texts.append(text)
    return texts


@pytest.mark.parametrize(
    ("n", "budget", "k1", "k2", "k3", "park"),
    [
        (24, 15, 10, 6, 3, True),
        (24, None, 10, 6, 3, True),
        (24, 20, 10, 6, 3, False),
        (12, 12, 100, 5, 2, True),  # k1 above the pool size
        (9, 9, 9, 9, 9, True),  # one round: pure greedy over the pool
    ],
)
def test_zip_matches_reference(n, budget, k1, k2, k3, park):
    texts = make_pool(n, seed=n + k3)
    ids = [f"ex{i:02d}" for i in range(n)]
    expected = reference_zip(texts, ids, budget or n, k1, k2, k3, park)

    result = zip_select(texts, ids, budget, k1=k1, k2=k2, k3=k3, park_unpicked=park)

    assert result.order.tolist() == expected
    assert np.isneginf(result.scores_n).sum() == n - len(expected)
    top = select_top(ids, result.scores_n, count=len(expected))
    assert top.indices.tolist() == expected


def test_zip_threads_same_result():
    texts = make_pool(30, seed=5)
    ids = [f"ex{i:02d}" for i in range(30)]
    one = zip_select(texts, ids, 20, k1=12, k2=6, k3=3)
    two = zip_select(texts, ids, 20, k1=12, k2=6, k3=3, num_threads=2)
    assert one.order.tolist() == two.order.tolist()


def test_zip_stable_under_pool_reordering():
    texts = make_pool(24, seed=11)
    ids = [f"ex{i:02d}" for i in range(24)]
    forward = zip_select(texts, ids, 12, k1=10, k2=6, k3=3)
    perm = np.random.default_rng(0).permutation(24)
    shuffled = zip_select([texts[i] for i in perm], [ids[i] for i in perm], 12, k1=10, k2=6, k3=3)
    assert [ids[perm[i]] for i in shuffled.order] == [ids[i] for i in forward.order]


def test_zip_hand_checked_three_texts():
    rng = np.random.default_rng(0)
    varied = "".join(rng.choice(list(string.ascii_lowercase), size=2000))
    narrow = "".join(rng.choice(list("abcdefgh"), size=2000))
    near_copy = varied + "!"
    texts, ids = [varied, narrow, near_copy], ["v", "n", "c"]

    def ratio(*members):
        return compression_ratio([member_bytes(m) for m in members])

    # Ratios with this seed: C([c]) 1.603 < C([v]) 1.607 < C([n]) 2.087 (26 letters cost
    # about 4.7 bits each, 8 letters about 3), and C([c, n]) 1.72 < C([c, v]) 3.13 because v
    # repeats c.
    assert ratio(near_copy) < ratio(varied) < ratio(narrow)
    assert ratio(near_copy, narrow) < 0.6 * ratio(near_copy, varied)

    # k2 = 1: round 1 takes c (lowest single ratio). Round 2's stage 2 measures each
    # candidate against the selection [c] and keeps n, so the near copy v comes last.
    assert zip_select(texts, ids, k1=3, k2=1, k3=1).order.tolist() == [2, 1, 0]

    # k2 = 3: stage 2 keeps both candidates and stage 3 ranks them without the selection,
    # by single ratio, so v comes before n.
    assert zip_select(texts, ids, k1=3, k2=3, k3=1).order.tolist() == [2, 0, 1]


def test_zip_k_one_sorts_by_single_ratio():
    texts = make_pool(15, seed=3)
    ids = [f"ex{i:02d}" for i in range(15)]
    single = [ratio_direct([t]) for t in texts]
    expected = sorted(range(15), key=lambda i: (single[i], ids[i]))
    assert zip_select(texts, ids, k1=1, k2=1, k3=1).order.tolist() == expected


def test_zip_parks_unpicked_stage2():
    texts = make_pool(6, seed=8)
    ids = [f"ex{i}" for i in range(6)]
    single = [ratio_direct([t]) for t in texts]
    highest_two = set(sorted(range(6), key=lambda i: (single[i], ids[i]))[4:])

    parked = zip_select(texts, ids, 4, k1=6, k2=4, k3=2, park_unpicked=True)

    # Round 1's stage 2 keeps the 4 lowest ratios and stage 3 picks 2 of them. The other 2
    # are parked, so round 2 can only take the 2 highest-ratio texts.
    assert set(parked.order[2:].tolist()) == highest_two
    assert highest_two.isdisjoint(parked.order[:2].tolist())


def test_zip_prefix_stream_matches_one_shot():
    rng = np.random.default_rng(4)
    members = [rng.bytes(int(rng.integers(1, 3000))) for _ in range(30)]
    members += [b"the same line again\n" * int(rng.integers(1, 200)) for _ in range(30)]
    prefix = _Prefix()
    for i, data in enumerate(members):
        joined = b"".join(members[:i]) + data
        one_shot = len(joined) / len(zlib.compress(joined, 9))
        assert prefix.ratio_with(data) == one_shot
        prefix.append(data)


def test_zip_scores_from_records():
    texts = make_pool(10, seed=2)
    records = [Record(f"r{i}", t, f"answer {i}") for i, t in enumerate(texts)]
    joined = [f"{t}\nanswer {i}" for i, t in enumerate(texts)]
    expected = zip_select(joined, [r.id for r in records], 6, k1=5, k2=3, k3=2).scores_n
    assert zip_scores(records, 6, k1=5, k2=3, k3=2).tolist() == expected.tolist()


def test_zip_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k1 >= k2 >= k3"):
        zip_select(["a", "b"], ["1", "2"], k1=1, k2=2, k3=1)
    with pytest.raises(ValueError, match="unique"):
        zip_select(["a", "b"], ["1", "1"])
    with pytest.raises(ValueError, match="budget"):
        zip_select(["a", "b"], ["1", "2"], 3)
