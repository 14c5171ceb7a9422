"""Record loading: every reader, every bad-row reason, strict mode and the id rule."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from train.record_files import load_records
from train.records import FieldNames, RecordError

DATA = Path(__file__).parent / "data"
MALFORMED_JSONL = DATA / "malformed.jsonl"
MALFORMED_CSV = DATA / "malformed.csv"


def sha_id(prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode()).hexdigest()[
        :16
    ]


def test_jsonl_malformed_counts(caplog):
    records, report = load_records(MALFORMED_JSONL, max_chars=200)

    assert [r.id for r in records] == [
        "a1",
        sha_id("Name a color.", "Blue."),
        "7",
        "uni",
        "z9",
    ]
    assert report.num_rows == 16  # the blank line is not a row
    assert report.num_loaded == 5
    assert dict(report.skipped) == {
        "invalid_json": 1,
        "missing_field": 2,
        "empty_field": 1,
        "wrong_type": 3,
        "invalid_utf8": 2,
        "duplicate_id": 1,
        "too_long": 1,
    }
    assert report.num_auto_ids == 1
    lines = {(b.line, str(b.reason)) for b in report.examples}
    assert lines == {
        (3, "invalid_json"),
        (5, "missing_field"),
        (6, "missing_field"),
        (7, "empty_field"),
        (8, "wrong_type"),
        (9, "wrong_type"),
        (10, "wrong_type"),
        (11, "invalid_utf8"),
        (12, "duplicate_id"),
        (13, "too_long"),
        (16, "invalid_utf8"),
    }
    assert "skipping row" in caplog.text


def test_jsonl_keeps_extra_fields():
    records, _ = load_records(MALFORMED_JSONL, max_chars=200)
    first = records[0]
    assert first.prompt == "What is 2+2?"
    assert first.response == "4"
    assert first.extra == {"source": "toy", "meta": {"level": 1}}
    assert first.to_row() == {
        "id": "a1",
        "prompt": "What is 2+2?",
        "response": "4",
        "source": "toy",
        "meta": {"level": 1},
    }
    assert records[3].prompt == "Wie viel ist 3×3? 🙂"


def test_jsonl_strict_raises_with_line():
    with pytest.raises(RecordError) as info:
        load_records(MALFORMED_JSONL, max_chars=200, strict=True)
    message = str(info.value)
    assert f"{MALFORMED_JSONL}:3" in message
    assert "invalid_json" in message
    assert info.value.bad.line == 3


def test_jsonl_default_max_chars_keeps_long_row():
    _, report = load_records(MALFORMED_JSONL)
    assert "too_long" not in report.skipped
    assert report.num_loaded == 6


def test_csv_malformed_counts():
    records, report = load_records(MALFORMED_CSV, max_chars=200)

    assert [r.id for r in records] == ["a1", "a2", sha_id("no id here", "fine"), "a8"]
    assert records[1].prompt == "Multi\nline prompt"
    assert records[3].prompt == "Quoted, with comma"
    assert records[0].extra == {"source": "toy"}
    assert dict(report.skipped) == {
        "empty_field": 1,
        "missing_field": 1,
        "invalid_csv": 1,
        "invalid_utf8": 1,
        "duplicate_id": 1,
        "too_long": 1,
    }
    lines = {(b.line, str(b.reason)) for b in report.examples}
    assert lines == {
        (5, "empty_field"),
        (6, "missing_field"),
        (7, "invalid_csv"),
        (8, "invalid_utf8"),
        (9, "duplicate_id"),
        (10, "too_long"),
    }


def test_csv_strict_raises_with_line():
    with pytest.raises(RecordError, match=r"malformed\.csv:5: empty_field"):
        load_records(MALFORMED_CSV, strict=True)


def test_csv_missing_column_raises():
    with pytest.raises(ValueError, match="not found"):
        load_records(MALFORMED_CSV, fields=FieldNames(prompt="question"))


def test_parquet_bad_rows(tmp_path):
    path = tmp_path / "pool.parquet"
    table = pa.table(
        {
            "uid": pa.array([1, 2, 3, 4, 1, 5], pa.int64()),
            "question": ["q1", None, "   ", "q4", "q5", "q6" * 200],
            "answer": ["a1", "a2", "a3", "a4", "a5", "a6"],
            "tags": [[1], [2], [3], [4, 5], [6], [7]],
        }
    )
    pq.write_table(table, path)
    fields = FieldNames(prompt="question", response="answer", id="uid")

    records, report = load_records(path, fields=fields, max_chars=100)

    assert [r.id for r in records] == ["1", "4"]
    assert records[1].extra == {"tags": [4, 5]}
    row = records[1].to_row(fields)
    assert row == {"uid": "4", "question": "q4", "answer": "a4", "tags": [4, 5]}
    assert dict(report.skipped) == {
        "missing_field": 1,
        "empty_field": 1,
        "duplicate_id": 1,
        "too_long": 1,
    }
    assert {(b.index, str(b.reason)) for b in report.examples} == {
        (1, "missing_field"),
        (2, "empty_field"),
        (4, "duplicate_id"),
        (5, "too_long"),
    }


def test_parquet_wrong_type_column(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [1, 2], "response": ["a", "b"]}), path)
    with pytest.raises(ValueError, match="no valid records") as info:
        load_records(path)
    assert "wrong_type=2" in str(info.value)
    with pytest.raises(RecordError, match=r"record 0\): wrong_type"):
        load_records(path, strict=True)


def test_json_list_and_index_ids(tmp_path):
    path = tmp_path / "list.json"
    rows = [
        {"prompt": "p0", "response": "r0"},
        {"prompt": "p1", "response": 5},
        {"prompt": "p2", "response": "r2", "id": None},
    ]
    path.write_text(json.dumps(rows))
    records, report = load_records(path, auto_id="index")
    assert [r.id for r in records] == ["0", "2"]
    assert dict(report.skipped) == {"wrong_type": 1}
    assert report.num_auto_ids == 2


def test_json_invalid_file_raises(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": "p", "response": "r"},\n {"prompt": ]')
    with pytest.raises(ValueError, match=r"broken\.json:2: invalid JSON"):
        load_records(path)


def test_compressed_jsonl_and_csv(tmp_path):
    gz = tmp_path / "pool.jsonl.gz"
    gz.write_bytes(gzip.compress(MALFORMED_JSONL.read_bytes()))
    zst = tmp_path / "pool.csv.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(MALFORMED_CSV.read_bytes()))

    plain_jsonl, _ = load_records(MALFORMED_JSONL, max_chars=200)
    plain_csv, _ = load_records(MALFORMED_CSV, max_chars=200)
    assert load_records(gz, max_chars=200)[0] == plain_jsonl
    assert load_records(zst, max_chars=200)[0] == plain_csv


def test_hf_dataset_dir_and_split(tmp_path):
    import datasets

    train = datasets.Dataset.from_dict(
        {"prompt": ["a", "b", ""], "response": ["x", "y", "z"], "id": ["i1", "i2", "i3"]}
    )
    test = datasets.Dataset.from_dict({"prompt": ["c"], "response": ["w"], "id": ["i4"]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    train.save_to_disk(tmp_path / "single")

    records, report = load_records(tmp_path / "dd", split="train")
    assert [r.id for r in records] == ["i1", "i2"]
    assert dict(report.skipped) == {"empty_field": 1}
    assert [r.id for r in load_records(tmp_path / "single")[0]] == ["i1", "i2"]
    with pytest.raises(ValueError, match="pass split="):
        load_records(tmp_path / "dd")


def test_hf_local_data_file(tmp_path):
    path = tmp_path / "clean.jsonl"
    rows = [{"id": f"k{i}", "prompt": "p", "response": f"r{i}"} for i in range(3)]
    path.write_text("\n".join(map(json.dumps, rows)))
    records, _ = load_records(path, format="hf")
    assert [r.id for r in records] == ["k0", "k1", "k2"]
    assert records == load_records(path)[0]


def test_content_id_stable_across_order(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    forward, backward = tmp_path / "f.jsonl", tmp_path / "b.jsonl"
    forward.write_text("\n".join(map(json.dumps, rows)))
    backward.write_text("\n".join(map(json.dumps, rows[::-1])))
    ids_forward = {r.prompt: r.id for r in load_records(forward)[0]}
    ids_backward = {r.prompt: r.id for r in load_records(backward)[0]}
    assert ids_forward == ids_backward
    assert ids_forward["p0"] == sha_id("p0", "r0")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "absent.jsonl")
    odd = tmp_path / "pool.txt"
    shutil.copy(MALFORMED_JSONL, odd)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_records(odd)
    assert load_records(odd, format="jsonl", max_chars=200)[1].num_loaded == 5
