"""``igds compare``: one fine-tuning run per method, one results table."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from igds_jax.cli import main as igds_main
from tests.train_assets import make_tiny_run, tiny_config
from train.config_io import to_dict


def test_compare_table(tmp_path, capsys):
    root = make_tiny_run(tmp_path / "tiny")
    lines = (root / "train.jsonl").read_text().splitlines()
    (tmp_path / "first.jsonl").write_text("\n".join(lines[:32]) + "\n")
    (tmp_path / "last.jsonl").write_text("\n".join(lines[-32:]) + "\n")
    cfg = tiny_config(
        root,
        tmp_path / "cmp",
        "loop.max_steps=3",
        f"data.test={root / 'test.jsonl'}",
        f"data.eval={root / 'eval.jsonl'}",
        "eval.max_examples=4",
        "eval.batch_size=4",
        "eval.max_new_tokens=4",
    )
    data = to_dict(cfg)
    data["compare"]["selections"] = {
        "first": str(tmp_path / "first.jsonl"),
        "last": str(tmp_path / "last.jsonl"),
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert igds_main(["compare", str(path)]) == 0

    out = tmp_path / "cmp"
    report = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["base", "full", "first", "last"]
    assert [rows[m]["num_train"] for m in rows] == [0, 64, 32, 32]
    assert "eval_loss" in report["metrics"]
    assert "math_accuracy" in report["metrics"]
    for method in ("base", "full", "first", "last"):
        sub = (
            out / method / "eval.json" if method == "base" else out / method / "eval" / "eval.json"
        )
        scored = json.loads(sub.read_text())
        full = json.loads((out / "full" / "eval" / "eval.json").read_text())
        assert rows[method]["eval_loss"] == scored["eval_loss"]
        expected = 100 * (scored["eval_loss"] - full["eval_loss"]) / abs(full["eval_loss"])
        assert rows[method]["eval_loss_change_pct"] == pytest.approx(expected)
    assert rows["full"]["eval_loss"] < rows["base"]["eval_loss"]
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| method | examples |")
    assert len([line for line in table if line.startswith("| ")]) == 5

    # A rerun reuses the finished runs instead of training again.
    before = (out / "first" / "run.json").stat().st_mtime
    assert igds_main(["compare", str(path)]) == 0
    assert (out / "first" / "run.json").stat().st_mtime == before

    # A finished run whose training file changed is not reused silently.
    first = tmp_path / "first.jsonl"
    assert json.loads((out / "first" / "run.json").read_text())["train_sha256"] == (
        hashlib.sha256(first.read_bytes()).hexdigest()
    )
    first.write_text("\n".join(lines[1:33]) + "\n")
    capsys.readouterr()
    assert igds_main(["compare", str(path)]) != 0
    err = capsys.readouterr().err
    assert "run 'first'" in err
    assert "was trained on a different" in err
