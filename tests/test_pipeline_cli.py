"""End-to-end ``igds`` method commands on the tiny planted example written into tmp_path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from igds_jax.cli import main
from igds_jax.method_config import MethodConfig, describe_fields, field_comments
from tests import method_assets as assets

CONFIG = str(Path(__file__).parents[1] / "configs" / "method_tiny.yaml")
BASELINES = ("random", "loss", "ifd", "zip")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return assets.write_all(tmp_path_factory.mktemp("assets"))


def overrides(inputs, run_dir, **changes) -> list[str]:
    values = {
        "run_dir": run_dir,
        "model.path": inputs["model"],
        "sae.path": inputs["sae"],
        "data.task": inputs["task"],
        "data.pool": inputs["pool"],
        "data.reference": inputs["reference"],
        "stability.other_task": inputs["other_task"],
        **changes,
    }
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def igds(*args) -> int:
    return main(["--log-level", "WARNING", *map(str, args)])


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    assert igds("run", CONFIG, *overrides(inputs, run_dir)) == 0
    return run_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def selected_ids(path: Path) -> list[str]:
    return [row["id"] for row in read_jsonl(path)]


def test_run_writes_every_file(full_run):
    expected = [
        "config.yaml",
        "run.log",
        "summary.json",
        "feature_rates.npz",
        "features.jsonl",
        "features.csv",
        "scores.jsonl",
        "selection.jsonl",
        "selection.parquet",
        "report.md",
        "plots/frequency.png",
        "plots/deltas.png",
        "plots/scores.png",
    ]
    for name in BASELINES:
        expected += [f"baselines/{name}/{f}" for f in ("scores.jsonl", "selection.jsonl")]
        expected.append(f"baselines/{name}/selection.parquet")
    missing = [name for name in expected if not (full_run / name).is_file()]
    assert missing == []


def test_summary_counts_skips_by_reason(full_run):
    summary = json.loads((full_run / "summary.json").read_text())
    pool = summary["data"]["pool"]
    assert pool["num_rows"] == 33
    assert pool["num_loaded"] == 30
    assert pool["skipped"] == {"invalid_json": 1, "missing_field": 1, "empty_field": 1}
    assert summary["select"]["num_selected"] == 9  # floor(0.3 * 30)
    assert set(summary["baselines"]) == set(BASELINES)
    assert summary["timings_s"]["score/frs"] > 0
    assert summary["tokens_per_s"]["score/frs"] > 0
    assert "skipping row" in (full_run / "run.log").read_text()


def test_planted_features_kept_and_dropped(full_run):
    rows = {r["id"]: r for r in read_jsonl(full_run / "features.jsonl")}
    assert rows[assets.YES_UP]["kept"]
    assert rows[assets.YES_UP]["delta"] > 0
    assert not rows[assets.YES_DOWN]["kept"]
    assert rows[assets.YES_DOWN]["delta"] < 0
    # "the" fires more often on the reference corpus, so contrast removes it
    assert assets.THE not in rows
    csv_lines = (full_run / "features.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["id", "rank", "frequency"]
    assert len(csv_lines) == len(rows) + 1


def test_selection_follows_planted_signal(full_run):
    pool = {r["id"]: r for r in assets.pool_rows(30)}
    kept = [r["id"] for r in read_jsonl(full_run / "features.jsonl") if r["kept"]]
    assert kept == [assets.YES_UP]
    # YES_UP fires with activation 1 on every "yes": FRS counts them
    yes = {i: r["response"].split().count("yes") for i, r in pool.items()}
    ranked = sorted(pool, key=lambda i: (-yes[i], i))
    rows = read_jsonl(full_run / "selection.jsonl")
    assert [r["id"] for r in rows] == ranked[:9]
    assert [r["rank"] for r in rows] == list(range(1, 10))
    np.testing.assert_allclose([r["score"] for r in rows], [yes[i] for i in ranked[:9]], rtol=1e-5)
    table = pq.read_table(full_run / "selection.parquet").to_pylist()
    assert [r["id"] for r in table] == ranked[:9]


def test_report_mentions_each_part(full_run):
    report = (full_run / "report.md").read_text()
    for text in ("## Data", "## Features", "plots/deltas.png", "## Timings", "| zip |"):
        assert text in report
    # The report explains a delta's sign and what an ineligible count means.
    assert "a positive delta means the edit lowered the dev loss" in report
    assert "kept when its delta is above 0." in report
    assert "Causal metric: loss on " in report
    assert "Real tokens/s counts the tokens of the examples" in report
    assert "Ineligible examples have no finite score" in report


def test_steps_one_by_one_match_run(inputs, full_run, tmp_path):
    args = overrides(inputs, tmp_path, **{"baselines.names": "[]"})
    for step in ("identify", "score", "select"):
        assert igds(step, CONFIG, *args) == 0
    assert selected_ids(tmp_path / "selection.jsonl") == selected_ids(full_run / "selection.jsonl")
    assert igds("baseline", "random", CONFIG, *args) == 0
    assert selected_ids(tmp_path / "baselines/random/selection.jsonl") == selected_ids(
        full_run / "baselines/random/selection.jsonl"
    )


def test_ifd_alone_matches_ifd_after_loss(inputs, full_run, tmp_path):
    # `igds run` computes Loss first and IFD reuses its conditioned losses; a lone
    # `igds baseline ifd` computes them itself. Both must give the same scores.
    args = overrides(inputs, tmp_path, **{"baselines.names": "[]"})
    assert igds("baseline", "ifd", CONFIG, *args) == 0
    alone = {r["id"]: r for r in read_jsonl(tmp_path / "baselines/ifd/scores.jsonl")}
    shared = {r["id"]: r for r in read_jsonl(full_run / "baselines/ifd/scores.jsonl")}
    losses = {r["id"]: r["loss"] for r in read_jsonl(full_run / "baselines/loss/scores.jsonl")}
    assert alone.keys() == shared.keys() == losses.keys()
    for key, row in alone.items():
        assert row["loss_conditioned"] == pytest.approx(shared[key]["loss_conditioned"], rel=1e-6)
        assert row["loss_alone"] == pytest.approx(shared[key]["loss_alone"], rel=1e-6)
        assert shared[key]["loss_conditioned"] == losses[key]


def test_selection_stable_under_pool_order(inputs, full_run, tmp_path):
    lines = Path(inputs["pool"]).read_text().splitlines()
    random.Random(1).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "features.jsonl").write_text((full_run / "features.jsonl").read_text())
    args = overrides(inputs, run_dir, **{"data.pool": shuffled})
    assert igds("score", CONFIG, *args) == 0
    assert igds("select", CONFIG, *args) == 0
    assert selected_ids(run_dir / "selection.jsonl") == selected_ids(full_run / "selection.jsonl")
    for name in ("random", "zip"):
        assert igds("baseline", name, CONFIG, *args) == 0
        ours = selected_ids(run_dir / f"baselines/{name}/selection.jsonl")
        assert ours == selected_ids(full_run / f"baselines/{name}/selection.jsonl")


def test_random_baseline_depends_on_seed(inputs, full_run, tmp_path):
    assert igds("baseline", "random", CONFIG, *overrides(inputs, tmp_path, seed=7)) == 0
    other = selected_ids(tmp_path / "baselines/random/selection.jsonl")
    assert other != selected_ids(full_run / "baselines/random/selection.jsonl")


def test_recall_only_ablation(inputs, tmp_path):
    args = overrides(inputs, tmp_path, **{"causal.enabled": "false"})
    assert igds("identify", CONFIG, *args) == 0
    rows = read_jsonl(tmp_path / "features.jsonl")
    assert all(r["kept"] and r["delta"] is None for r in rows)
    assert [r["id"] for r in rows][:2] == [assets.YES_UP, assets.YES_DOWN]


def test_random_candidates_ablation(inputs, tmp_path):
    args = overrides(inputs, tmp_path, **{"causal.candidates": "random", "causal.num_random": 5})
    assert igds("identify", CONFIG, *args) == 0
    rows = read_jsonl(tmp_path / "features.jsonl")
    expected = np.sort(np.random.default_rng(0).choice(assets.D_SAE, 5, replace=False))
    assert [r["id"] for r in rows] == expected.tolist()
    assert all(r["delta"] is not None for r in rows)


def test_stability_command(inputs, tmp_path):
    assert igds("stability", CONFIG, *overrides(inputs, tmp_path)) == 0
    result = json.loads((tmp_path / "stability.json").read_text())
    # both task files come from the same generator, so the top features agree
    assert result["jaccard"] == 1.0
    assert result["top_a"][:2] == [assets.YES_UP, assets.YES_DOWN]
    assert "## Stability" in (tmp_path / "report.md").read_text()


def test_strict_stops_at_malformed_row(inputs, tmp_path, capsys):
    code = igds("baseline", "random", CONFIG, *overrides(inputs, tmp_path), "--strict")
    assert code == 2
    err = capsys.readouterr().err
    assert "pool.jsonl:31: invalid_json" in err


def test_sae_width_mismatch_fails_early(inputs, tmp_path, capsys):
    from sae import SAEConfig, params_from_arrays, save_saelens

    cfg = SAEConfig("relu", d_in=16, d_sae=4, hook_name=assets.HOOK)
    arrays = {
        "W_enc": np.zeros((16, 4)),
        "b_enc": np.zeros(4),
        "W_dec": np.zeros((4, 16)),
        "b_dec": np.zeros(16),
    }
    save_saelens(params_from_arrays(arrays, cfg, "test"), cfg, tmp_path / "sae16")
    args = overrides(inputs, tmp_path / "run", **{"sae.path": tmp_path / "sae16"})
    assert igds("identify", CONFIG, *args) == 2
    assert "d_in=16" in capsys.readouterr().err


def test_unknown_config_key(inputs, tmp_path, capsys):
    args = overrides(inputs, tmp_path, **{"causal.alpah": 3})
    assert igds("identify", CONFIG, *args) == 2
    assert "unknown keys ['alpah']" in capsys.readouterr().err


def test_bad_choice_lists_options(inputs, tmp_path, capsys):
    args = overrides(inputs, tmp_path, **{"score.aggregate": "median"})
    assert igds("score", CONFIG, *args) == 2
    assert "score.aggregate='median'" in capsys.readouterr().err


def test_every_config_field_documented():
    lines = describe_fields(MethodConfig)
    undocumented = [line for line in lines if line.endswith(": ")]
    assert undocumented == []
    assert "alpha" in field_comments(type(MethodConfig().causal))


def test_help_lists_fields_and_units(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "causal.alpha (default 4.0)" in out
    assert "--strict" in out
    assert "in tokens" in out or "tokens per" in out
