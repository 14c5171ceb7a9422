"""SAE training: dictionary recovery on synthetic data, resume, buffer, config, outputs."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from sae import encode, load_saelens
from sae.buffer import ActivationBuffer
from sae.train import SAETrainConfig, load_train_config, lr_schedule, train_sae
from sae.train_step import geometric_median

D_IN, N_TRUE = 32, 64
DICTIONARY = np.random.default_rng(0).normal(size=(N_TRUE, D_IN))
DICTIONARY /= np.linalg.norm(DICTIONARY, axis=1, keepdims=True)


def synthetic_source(start=0, rows=256, crash_at=None):
    """Sparse nonnegative codes (about 4 of 64 active) times a fixed unit dictionary.

    Batch ``i`` depends only on ``i``, so a source restarted at ``start`` continues the
    same stream.
    """
    i = start
    while True:
        if crash_at is not None and i == crash_at:
            raise RuntimeError("simulated crash of the activation source")
        rng = np.random.default_rng((1, i))
        codes = (rng.random((rows, N_TRUE)) < 4 / N_TRUE) * rng.uniform(0.5, 2.0, (rows, N_TRUE))
        yield (codes @ DICTIONARY).astype(np.float32)
        i += 1


BASE = SAETrainConfig(
    d_sae=128,
    k=4,
    lr=2e-3,
    warmup_steps=50,
    steps=1500,
    batch_size=512,
    shuffle_buffer_tokens=4096,
    dead_feature_window=100,
    log_every=100,
)


def recovered_fraction(params, threshold=0.9):
    w = np.asarray(params.W_dec, np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    best_cos = (DICTIONARY @ w.T).max(axis=1)
    return float((best_cos > threshold).mean())


@pytest.mark.slow
def test_topk_recovers_true_directions(tmp_path):
    cfg = dataclasses.replace(BASE, output_dir=str(tmp_path / "sae"))
    result = train_sae(synthetic_source, cfg, progress=False)
    assert recovered_fraction(result.params) >= 0.9
    final = result.metrics["final"]
    assert final["l0"] <= 4.0 + 1e-6
    assert final["fvu"] < 0.3
    assert final["dead_fraction"] < 0.2

    # the saved SAE is what train_sae returned, and reads raw activations
    loaded, loaded_cfg = load_saelens(tmp_path / "sae")
    np.testing.assert_allclose(loaded.W_dec, result.params.W_dec, rtol=1e-6)
    assert loaded_cfg.architecture == "topk"
    assert loaded_cfg.k == 4
    x = next(synthetic_source(10**6))
    f = np.asarray(encode(loaded, loaded_cfg, jnp.asarray(x)))
    recon = f @ np.asarray(loaded.W_dec) + np.asarray(loaded.b_dec)
    fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.3

    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert {"l0", "fvu", "dead_fraction"} <= set(metrics["final"])
    assert metrics["steps"] == cfg.steps
    assert len(metrics["history"]) == cfg.steps // cfg.log_every
    assert metrics["train_config"]["k"] == 4


@pytest.mark.slow
def test_batchtopk_recovers_and_learns_threshold():
    cfg = dataclasses.replace(BASE, architecture="batchtopk")
    result = train_sae(synthetic_source, cfg, progress=False)
    assert result.cfg.architecture == "batchtopk"
    assert recovered_fraction(result.params) >= 0.75
    threshold = np.asarray(result.params.threshold)
    assert (threshold > 0).all()
    assert np.ptp(threshold) == 0
    # at inference the learned threshold alone gives about k active features per token
    x = next(synthetic_source(10**6))
    l0 = (np.asarray(encode(result.params, result.cfg, jnp.asarray(x))) > 0).sum(-1).mean()
    assert 2 <= l0 <= 8


def test_decoder_rows_unit_norm_without_normalization():
    cfg = dataclasses.replace(BASE, steps=30, normalize_activations="none", log_every=10)
    result = train_sae(synthetic_source, cfg, progress=False)
    norms = np.linalg.norm(np.asarray(result.params.W_dec), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert result.metrics["norm_scaling_factor"] == 1.0


def small_run(tmp_path, **changes):
    return dataclasses.replace(
        BASE,
        steps=60,
        batch_size=128,
        shuffle_buffer_tokens=512,
        checkpoint_every=20,
        log_every=10,
        checkpoint_dir=str(tmp_path),
        **changes,
    )


def params_equal(a, b):
    for name, value in a.to_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(getattr(b, name)), name)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_resume_after_crash_matches_uninterrupted(tmp_path, architecture):
    reference = train_sae(
        lambda start: synthetic_source(start, rows=64),
        small_run(tmp_path / "ref", architecture=architecture),
        progress=False,
    )

    crashed_cfg = small_run(tmp_path / "run", architecture=architecture)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(
            lambda start: synthetic_source(start, rows=64, crash_at=90), crashed_cfg, progress=False
        )
    checkpoints = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.isdigit())
    assert checkpoints
    assert int(checkpoints[-1]) < 60

    resumed = train_sae(lambda start: synthetic_source(start, rows=64), crashed_cfg, progress=False)
    params_equal(reference.params, resumed.params)
    assert resumed.metrics["history"] == reference.metrics["history"]


def test_resume_with_plain_iterator_skips_consumed_batches(tmp_path):
    reference = train_sae(synthetic_source(rows=64), small_run(tmp_path / "ref"), progress=False)
    cfg = small_run(tmp_path / "run")
    with pytest.raises(RuntimeError):
        train_sae(synthetic_source(rows=64, crash_at=70), cfg, progress=False)
    resumed = train_sae(synthetic_source(rows=64), cfg, progress=False)
    params_equal(reference.params, resumed.params)


def test_resume_with_changed_config_raises(tmp_path):
    train_sae(synthetic_source(rows=64), small_run(tmp_path), progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train_sae(synthetic_source(rows=64), small_run(tmp_path, k=5), progress=False)


def test_source_running_out_stops_early(tmp_path):
    def short_source():
        gen = synthetic_source(rows=64)
        for _ in range(20):
            yield next(gen)

    cfg = dataclasses.replace(small_run(tmp_path), steps=1000)
    result = train_sae(short_source(), cfg, progress=False)
    assert result.metrics["stopped_early"]
    assert result.metrics["steps"] == 20 * 64 // 128


# --- buffer ----------------------------------------------------------------------------


def document_source(n_docs=40, rows=32, d=3):
    """Each batch is one 'document' whose rows all carry the document id."""
    for doc in range(n_docs):
        yield np.full((rows, d), doc, np.float32)


def test_buffer_mixes_documents():
    buffer = ActivationBuffer(document_source(), capacity=256, batch_size=64, seed=0)
    batch = buffer.next_batch()
    assert batch.shape == (64, 3)
    assert len(np.unique(batch[:, 0])) >= 5
    seen = [batch] + list(buffer)
    rows = np.concatenate(seen)
    # every row comes out exactly once
    assert sorted(rows[:, 0].tolist()) == sorted(np.repeat(np.arange(40), 32).tolist())


def test_buffer_state_restores_same_sequence():
    buffer = ActivationBuffer(document_source(), capacity=256, batch_size=64, seed=3)
    for _ in range(5):
        buffer.next_batch()
    rows, position = buffer.state()
    expected = list(buffer)

    source = document_source()
    for _ in range(position["batches_read"]):
        next(source)
    restored = ActivationBuffer(source, capacity=256, batch_size=64, seed=99)
    restored.restore(rows, json.loads(json.dumps(position)))
    actual = list(restored)
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_buffer_rejects_bad_batches():
    with pytest.raises(ValueError, match="twice the batch size"):
        ActivationBuffer(iter([]), capacity=100, batch_size=64, seed=0)
    bad = iter([np.ones((4, 3)), np.ones((4, 5))])
    with pytest.raises(ValueError, match="width 5, expected d_in=3"):
        ActivationBuffer(bad, capacity=64, batch_size=8, seed=0).next_batch()
    nan = iter([np.full((4, 3), np.nan)])
    with pytest.raises(ValueError, match="NaN"):
        ActivationBuffer(nan, capacity=64, batch_size=8, seed=0).next_batch()


# --- pieces ----------------------------------------------------------------------------


def test_geometric_median_minimizes_distance_sum():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(200, 5)), rng.normal(50, 1, size=(20, 5))])
    median = geometric_median(x).astype(np.float64)

    def objective(y):
        return np.linalg.norm(x - y, axis=1).sum()

    best = objective(median)
    for _ in range(50):
        step = rng.normal(size=5)
        assert objective(median + 1e-2 * step / np.linalg.norm(step)) >= best - 1e-6
    # robust to the outlier cluster, unlike the mean
    assert np.linalg.norm(median) < 1.5 < np.linalg.norm(x.mean(0))


def test_lr_schedule_shape():
    cfg = SAETrainConfig(lr=1e-3, warmup_steps=100, steps=1000, lr_decay_fraction=0.2)
    schedule = lr_schedule(cfg)
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)
    assert float(schedule(700)) == pytest.approx(1e-3)
    assert float(schedule(900)) == pytest.approx(5e-4)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)


def test_train_config_validation_and_yaml(tmp_path):
    with pytest.raises(ValueError, match="'topk' or 'batchtopk'"):
        SAETrainConfig(architecture="relu")
    with pytest.raises(ValueError, match="k must be"):
        SAETrainConfig(d_sae=8, k=9)
    path = tmp_path / "sae.yaml"
    path.write_text("train:\n  d_sae: 256\n  k: 8\nactivations:\n  model: x\n")
    cfg = load_train_config(path, steps=10)
    assert (cfg.d_sae, cfg.k, cfg.steps) == (256, 8, 10)
    path.write_text("train:\n  d_sea: 256\n")
    with pytest.raises(ValueError, match=r"sae\.yaml: unknown SAE training fields \['d_sea'\]"):
        load_train_config(path)
