"""Top-fraction selection: ranking rule, order stability, budgets and the output files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from igds_jax.selection import rank_order, select_top, selection_rows, write_selection
from train.record_files import load_records
from train.records import FieldNames, Record


def reference_order(ids, scores):
    """Plain Python ranking: score descending, then id ascending."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))


def test_rank_matches_plain_sort():
    rng = np.random.default_rng(1)
    ids = [f"ex{rng.integers(10**6):06d}-{i}" for i in range(300)]
    scores = rng.integers(0, 5, size=300).astype(float)  # many ties
    assert rank_order(ids, scores).tolist() == reference_order(ids, scores.tolist())


def test_ties_broken_by_id():
    ids = ["c", "a", "b", "d"]
    scores = np.array([1.0, 1.0, 2.0, 1.0])
    selection = select_top(ids, scores, count=3)
    assert [ids[i] for i in selection.indices] == ["b", "a", "c"]
    assert selection.ranks.tolist() == [1, 2, 3]
    assert selection.scores.tolist() == [2.0, 1.0, 1.0]


def test_stable_under_pool_reordering():
    rng = np.random.default_rng(2)
    ids = [f"id{i:04d}" for i in range(200)]
    scores = np.round(rng.normal(size=200), 1)  # rounding makes ties
    chosen = {ids[i] for i in select_top(ids, scores, fraction=0.3).indices}
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(200)
        shuffled_ids = [ids[i] for i in perm]
        selection = select_top(shuffled_ids, scores[perm], fraction=0.3)
        assert {shuffled_ids[i] for i in selection.indices} == chosen
        assert len(selection.indices) == 60


@pytest.mark.parametrize(
    ("fraction", "n", "expected"), [(0.5, 5, 2), (0.3, 10, 3), (0.29, 100, 29), (1.0, 7, 7)]
)
def test_fraction_uses_floor(fraction, n, expected):
    ids = [str(i) for i in range(n)]
    assert len(select_top(ids, np.arange(n, dtype=float), fraction=fraction).indices) == expected


def test_default_fraction_is_half():
    ids = [str(i) for i in range(10)]
    assert len(select_top(ids, np.zeros(10)).indices) == 5


def test_neg_inf_never_selected(caplog):
    ids = ["a", "b", "c", "d"]
    scores = np.array([-np.inf, 0.5, -np.inf, -1.0])
    selection = select_top(ids, scores, fraction=1.0)
    assert [ids[i] for i in selection.indices] == ["b", "d"]
    assert selection.num_ineligible == 2
    assert "only 2 of 4 are eligible" in caplog.text


def test_nan_and_duplicate_ids_raise():
    with pytest.raises(ValueError, match="NaN"):
        select_top(["a", "b"], np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="unique"):
        select_top(["a", "a"], np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        select_top(["a", "b"], np.array([0.0]))


def test_token_budget_stops_at_first_overflow():
    ids = ["a", "b", "c", "d", "e"]
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    tokens = np.array([100, 200, 300, 10, 10])
    selection = select_top(ids, scores, token_budget=350, token_counts_n=tokens)
    assert [ids[i] for i in selection.indices] == ["a", "b"]
    capped = select_top(ids, scores, count=1, token_budget=10_000, token_counts_n=tokens)
    assert [ids[i] for i in capped.indices] == ["a"]
    with pytest.raises(ValueError, match="token_counts_n"):
        select_top(ids, scores, token_budget=350)


def make_records():
    return [
        Record("r0", "p0", "a0", {"source": "gsm", "level": 1}),
        Record("r1", "p1", "a1", {"source": "gsm", "level": 2}),
        Record("r2", "p2", "a2", {"source": "sst", "level": 3}),
    ]


def test_rows_keep_fields_and_messages():
    records = make_records()
    selection = select_top([r.id for r in records], np.array([0.1, 0.9, 0.5]), count=2)
    rows = selection_rows(records, selection, add_messages=True)
    assert rows[0] == {
        "id": "r1",
        "prompt": "p1",
        "response": "a1",
        "source": "gsm",
        "level": 2,
        "score": 0.9,
        "rank": 1,
        "messages": [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "a1"}],
    }
    assert rows[1]["id"] == "r2"
    assert rows[1]["rank"] == 2


def test_rows_reject_field_clash():
    records = [Record("r0", "p", "a", {"score": 3})]
    selection = select_top(["r0"], np.array([1.0]), count=1)
    with pytest.raises(ValueError, match="score_field"):
        selection_rows(records, selection)
    assert selection_rows(records, selection, score_field="igds_score")[0]["score"] == 3


def test_write_jsonl_and_parquet(tmp_path):
    records = make_records()
    fields = FieldNames(prompt="question", response="answer", id="uid")
    selection = select_top([r.id for r in records], np.array([0.1, 0.9, 0.5]), count=2)

    jsonl = write_selection(tmp_path / "sel.jsonl", records, selection, fields=fields)
    parquet = write_selection(tmp_path / "sel.parquet", records, selection, fields=fields)

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    table = pq.read_table(parquet).to_pylist()
    assert lines == table
    assert [row["uid"] for row in lines] == ["r1", "r2"]
    assert set(lines[0]) == {"uid", "question", "answer", "source", "level", "score", "rank"}
    reloaded, report = load_records(jsonl, fields=fields)
    assert [r.id for r in reloaded] == ["r1", "r2"]
    assert reloaded[0].extra == {"source": "gsm", "level": 2, "score": 0.9, "rank": 1}
    assert report.num_skipped == 0
    assert not (tmp_path / "sel.jsonl.tmp").exists()


def test_write_rejects_unknown_suffix(tmp_path):
    records = make_records()
    selection = select_top([r.id for r in records], np.zeros(3), count=1)
    with pytest.raises(ValueError, match="unsupported output suffix"):
        write_selection(tmp_path / "sel.csv", records, selection)
