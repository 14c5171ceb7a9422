"""The streaming scoring engine: scores, fixed shapes, shard files, resume and memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from igds_jax import shard_io
from igds_jax.corpus_stream import stream_records
from igds_jax.score_fns import frs_params, frs_score_fn
from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
from models.loading import load_model
from models.sharding import make_mesh, make_placer
from sae import load_sae
from tests import scale_assets as sa
from train.tokenize import encode_example

CONFIG = ScoringConfig(chunk_size=16, tokens_per_batch=256, max_tokens=64, bucket_multiple=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    model_dir, sae_dir = sa.write_assets(root)
    mesh = make_mesh()
    model = load_model(model_dir, place=make_placer(mesh))
    sae_params, sae_cfg = load_sae(sae_dir)
    params = frs_params(model.state, sae_params, sa.FEATURES, mesh)
    pool = sa.write_pool(root / "pool.jsonl", sa.pool_rows(90))
    # one function object for every engine, so tests share its compiled shapes
    score_fn = frs_score_fn(model.graphdef, sae_cfg, model.config.n_layers)
    return model_dir, model, score_fn, mesh, params, pool


def make_engine(setup, config=CONFIG, score_fn=None):
    _, _, shared_fn, mesh, params, _ = setup
    return ScoringEngine(score_fn or shared_fn, params, ["frs"], mesh, config)


def encoder(model, max_tokens=64):
    def encode(record):
        return encode_example(
            model.tokenizer, record.prompt, record.response, max_tokens=max_tokens
        )

    return encode


def encoded_pool(setup):
    _, model, _, _, _, pool = setup
    encode = encoder(model)
    return [encode(record) for _, _, record in stream_records(pool)]


def run_to(setup, out: Path, items=None, config=CONFIG):
    _, model, _, _, _, pool = setup
    engine = make_engine(setup, config)
    items = stream_records(pool) if items is None else items
    summary = engine.run(items, encoder(model), out, manifest={"pool": pool.name})
    return summary


def test_frs_matches_torch_reference(setup):
    examples = encoded_pool(setup)
    scores = make_engine(setup).score_examples(examples)["frs"]
    expected = sa.torch_frs(setup[0], examples)
    assert (expected > 0).mean() > 0.5, "the SAE features must fire on most examples"
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_loss_method_matches_torch_reference(setup, tmp_path):
    from igds_jax.cli import main

    model_dir, model, _, _, _, pool = setup
    sae_dir = model_dir.parent / "sae"
    out = tmp_path / "loss"
    command = sa.cli_command(model_dir, sae_dir, pool, out)[4:] + ["--method", "loss"]
    assert main(["score-shard", *command]) == 0
    indices, ids, losses = sa.read_scores(out / shard_io.MERGED, "loss")
    expected = sa.torch_response_loss(model_dir, encoded_pool(setup))
    assert indices == list(range(90))
    assert json.loads((out / shard_io.MANIFEST).read_text())["method"] == "loss"
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_compiled_shapes_bounded_by_settings(setup):
    inner = setup[2]
    traced_shapes = []

    def counting(params, batch):
        traced_shapes.append(batch["tokens_bt"].shape)  # runs once per trace
        return inner(params, batch)

    engine = make_engine(setup, score_fn=counting)
    examples = encoded_pool(setup)
    num_shapes = engine.warm_up(np.asarray([e.length for e in examples]))
    assert len(traced_shapes) == num_shapes
    engine.score_examples(examples)
    assert len(traced_shapes) == num_shapes, "warm_up must compile every shape the pool needs"
    engine.score_examples(examples[:20])
    engine.score_examples(examples)
    engine.score_examples(examples * 16)
    allowed = {(rows, b) for b in engine.buckets() for rows in engine.row_ladder(b)}
    assert len(traced_shapes) == len(set(traced_shapes)), "a shape compiled twice"
    assert set(traced_shapes) <= allowed
    assert len({length for _, length in traced_shapes}) > 1, "the pool must span buckets"


def test_tail_batches_use_row_ladder(setup):
    engine = make_engine(setup)
    assert engine.row_ladder(16) == (16, 8, 4, 2, 1)
    assert engine.row_ladder(48) == (5, 3, 2, 1)
    lengths = np.asarray([40] * 12 + [10] * 3)
    plan = engine.plan(lengths)
    assert [(length, rows, len(m)) for length, rows, m in plan] == [
        (16, 4, 3),
        (48, 5, 5),
        (48, 5, 5),
        (48, 2, 2),
    ]
    members = np.concatenate([m for _, _, m in plan])
    assert sorted(members.tolist()) == list(range(15))


def test_scores_independent_of_batching(setup):
    examples = encoded_pool(setup)
    base = make_engine(setup).score_examples(examples)["frs"]
    config = ScoringConfig(
        tokens_per_batch=48,
        max_tokens=64,
        bucket_multiple=16,
        bucket_scheme="pow2",
        padding_side="left",
    )
    other = make_engine(setup, config).score_examples(examples)["frs"]
    np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-6)


def test_run_merges_every_example_once(setup, tmp_path):
    summary = run_to(setup, tmp_path / "run")
    count = shard_io.merge_shards(tmp_path / "run")
    indices, ids, scores = sa.read_scores(tmp_path / "run" / shard_io.MERGED)
    expected = make_engine(setup).score_examples(encoded_pool(setup))["frs"]
    assert count == summary.num_corpus_examples == 90
    assert indices == list(range(90))
    assert ids == [f"x{i}" for i in range(90)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert summary.chunks_scored == 6  # ceil(90 / 16)


def crash_after(items, n):
    for position, item in enumerate(items):
        if position == n:
            raise KeyboardInterrupt("simulated crash")
        yield item


def test_resume_after_interrupt_is_byte_identical(setup, tmp_path):
    _, _, _, _, _, pool = setup
    run_to(setup, tmp_path / "clean")
    shard_io.merge_shards(tmp_path / "clean")

    with pytest.raises(KeyboardInterrupt):
        run_to(setup, tmp_path / "resumed", items=crash_after(stream_records(pool), 40))
    with pytest.raises(ValueError, match="has not finished"):
        shard_io.merge_shards(tmp_path / "resumed")
    summary = run_to(setup, tmp_path / "resumed")
    shard_io.merge_shards(tmp_path / "resumed")

    assert summary.chunks_resumed == 2  # 40 examples = 2 full chunks of 16 written
    assert summary.num_scored == 90 - 32
    clean = (tmp_path / "clean" / shard_io.MERGED).read_bytes()
    assert (tmp_path / "resumed" / shard_io.MERGED).read_bytes() == clean


def test_resume_rescores_corrupt_shard(setup, tmp_path):
    out = tmp_path / "run"
    run_to(setup, out)
    shard_io.merge_shards(out)
    clean = (out / shard_io.MERGED).read_bytes()
    shard_dir = out / shard_io.SHARD_DIR
    victim = shard_dir / f"{shard_io.shard_stem(0, 3)}.jsonl"
    victim.write_bytes(victim.read_bytes()[:-20])  # a torn write
    stale = shard_dir / f"{shard_io.shard_stem(0, 4)}.jsonl.tmp-999"
    stale.write_bytes(b"partial")

    summary = run_to(setup, out)
    shard_io.merge_shards(out)

    assert summary.chunks_scored == 1
    assert not stale.exists()
    assert (out / shard_io.MERGED).read_bytes() == clean


def test_resume_with_other_settings_raises(setup, tmp_path):
    run_to(setup, tmp_path / "run")
    other = ScoringConfig(chunk_size=32, tokens_per_batch=256, max_tokens=64, bucket_multiple=16)
    with pytest.raises(ValueError, match="chunk_size"):
        run_to(setup, tmp_path / "run", config=other)


def test_merge_detects_damaged_shard(setup, tmp_path):
    out = tmp_path / "run"
    run_to(setup, out)
    (out / shard_io.SHARD_DIR / f"{shard_io.shard_stem(0, 2)}.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="p00000-c0000002 .* does not match its marker"):
        shard_io.merge_shards(out)
    assert not (out / shard_io.MERGED).exists()


def test_merge_detects_missing_example(setup, tmp_path):
    out = tmp_path / "run"
    run_to(setup, out)
    shard_dir = out / shard_io.SHARD_DIR
    lines = (shard_dir / f"{shard_io.shard_stem(0, 2)}.jsonl").read_bytes().splitlines(True)
    # a consistent shard and marker that lack one row, as a buggy writer could leave them
    shard_io.write_chunk(shard_dir, 0, 2, b"".join(lines[:3] + lines[4:]), len(lines) - 1)
    with pytest.raises(ValueError, match="example index 35 is missing"):
        shard_io.merge_shards(out)
    assert not (out / shard_io.MERGED).exists()


def test_stream_indices_must_be_consecutive(setup, tmp_path):
    _, _, _, _, _, pool = setup
    items = ((index * 2, example_id, r) for index, example_id, r in stream_records(pool))
    with pytest.raises(ValueError, match="indices must run 0, 1, 2"):
        run_to(setup, tmp_path / "run", items=items)


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path):
    model_dir, sae_dir = sa.write_assets(tmp_path)
    pool = sa.write_pool(tmp_path / "pool.jsonl", sa.pool_rows(1200, seed=5))
    env = sa.subprocess_env()
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    extra = ("--chunk-size", "16")
    sa.run_checked(sa.cli_command(model_dir, sae_dir, pool, clean, *extra), env)

    command = sa.cli_command(model_dir, sae_dir, pool, killed, *extra)
    proc = subprocess.Popen(
        command, env=env, cwd=sa.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    shard_dir = killed / shard_io.SHARD_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if shard_dir.exists() and len(list(shard_dir.glob("*-c*.done"))) >= 5:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(shard_dir.glob("*-c*.done")))
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= done_at_kill < 1200 // 16, "the kill must land while chunks remain"
    assert not (killed / shard_io.MERGED).exists()

    output = sa.run_checked(command, env)
    assert "resumed" in output
    assert (killed / shard_io.MERGED).read_bytes() == (clean / shard_io.MERGED).read_bytes()


MEASURE = """
import resource, sys
from igds_jax.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


@pytest.mark.slow
def test_peak_memory_flat_in_corpus_size(tmp_path):
    model_dir, sae_dir = sa.write_assets(tmp_path)
    env = sa.subprocess_env()
    # each row carries a 96 KB metadata field, so holding the corpus would show in the peak
    rng = np.random.default_rng(9)
    rows = [{**row, "meta": rng.bytes(48 * 1024).hex()} for row in sa.pool_rows(200, seed=9)]
    peaks = {}
    for factor in (1, 16):
        pool = tmp_path / f"pool{factor}.jsonl"
        with open(pool, "w") as f:
            for copy in range(factor):
                for row in rows:
                    f.write(json.dumps({**row, "id": f"{row['id']}-{copy}"}) + "\n")
        command = sa.cli_command(model_dir, sae_dir, pool, tmp_path / f"out{factor}")
        command = [sys.executable, "-c", MEASURE, *command[3:], "--chunk-size", "128"]
        output = sa.run_checked(command, env, timeout=600)
        peaks[factor] = int(output.split("MAXRSS_KB")[-1].split()[0])
        assert f"merged {200 * factor} rows" in output
    corpus_mb = (tmp_path / "pool16.jsonl").stat().st_size / 2**20
    assert corpus_mb > 280, "the 16x corpus must be large next to the process footprint"
    assert peaks[16] <= 1.2 * peaks[1], f"peak RSS grew from {peaks[1]} KB to {peaks[16]} KB"
