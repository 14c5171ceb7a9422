"""FRS against a NumPy recomputation from captured activations and the SAE formula."""

from __future__ import annotations

import numpy as np
import pytest

from igds_jax.frs import frs_scores
from igds_jax.selection import select_top
from sae import SAEConfig, params_from_arrays
from tests import method_assets as assets
from tests.sae_reference import np_encode

FEATURES = [assets.YES_UP, assets.APPLE, assets.THE]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = assets.load_tiny_model(tmp_path_factory.mktemp("model"))
    arrays, params, cfg = assets.planted_sae()
    rows = assets.pool_rows(9) + assets.task_rows(4)
    pool = assets.encode_rows(model.tokenizer, rows)
    return model, arrays, params, cfg, rows, pool


def score(setup, examples=None, features=FEATURES, params=None, cfg=None, **kwargs):
    model, _, default_params, default_cfg, _, pool = setup
    kwargs.setdefault("tokens_per_batch", 48)
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("bucket_multiple", 8)
    return frs_scores(
        model.graphdef,
        model.state,
        params or default_params,
        cfg or default_cfg,
        pool if examples is None else examples,
        features,
        hook_name=assets.HOOK,
        **kwargs,
    )


def numpy_frs(model, arrays, examples, features, aggregate, response_only=False, arch="jumprelu"):
    out = []
    for e in examples:
        h = assets.captured_hook(model, e)
        f = np_encode(arrays, arch, h, apply_b_dec=False, k=3)[:, features]
        mask = e.token_mask & (e.response_mask if response_only else True)
        per_token = f.sum(-1)[mask]
        if aggregate == "sum":
            out.append(per_token.sum())
        elif aggregate == "mean":
            out.append(per_token.mean() if per_token.size else 0.0)
        else:
            out.append(per_token.max() if per_token.size else 0.0)
    return np.array(out)


@pytest.mark.parametrize("aggregate", ["sum", "mean", "max"])
def test_frs_matches_numpy(setup, aggregate):
    model, arrays, _, _, _, pool = setup
    got = score(setup, aggregate=aggregate)
    expected = numpy_frs(model, arrays, pool, FEATURES, aggregate)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_frs_response_tokens_only(setup):
    model, arrays, _, _, _, pool = setup
    got = score(setup, tokens="response")
    expected = numpy_frs(model, arrays, pool, FEATURES, "sum", response_only=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", ["all", "response"])
def test_feature_stats_match_numpy(setup, tokens):
    model, arrays, _, _, _, pool = setup
    scores, stats = score(setup, tokens=tokens, feature_stats=True)
    np.testing.assert_allclose(scores, score(setup, tokens=tokens), rtol=1e-6)
    assert stats.feature_ids.tolist() == FEATURES
    for n, e in enumerate(pool):
        h = assets.captured_hook(model, e)
        f = np_encode(arrays, "jumprelu", h, apply_b_dec=False, k=3)[:, FEATURES]
        mask = e.token_mask & (e.response_mask if tokens == "response" else True)
        f = np.where(mask[:, None], f, 0.0)
        np.testing.assert_allclose(stats.sums_nm[n], f.sum(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.peaks_nm[n], f.max(0), rtol=1e-5, atol=1e-6)
        for m in range(len(FEATURES)):
            if f[:, m].max() > 0:
                # the peak index points at a token with the peak activation
                got = f[stats.peak_pos_nm[n, m], m]
                np.testing.assert_allclose(got, f[:, m].max(), rtol=1e-5)


def test_frs_planted_signal(setup):
    _, _, _, _, rows, _ = setup
    got = score(setup, features=[assets.YES_UP])
    yes_counts = [(r["prompt"] + " " + r["response"]).split().count("yes") for r in rows]
    # the YES_UP activation is the projection on E[yes], exactly 1 on each "yes"
    np.testing.assert_allclose(got, yes_counts, rtol=1e-5)


def test_frs_topk_sae(setup):
    model, arrays, _, _, _, pool = setup
    cfg = SAEConfig(
        architecture="topk",
        d_in=assets.D_MODEL,
        d_sae=assets.D_SAE,
        k=3,
        apply_b_dec_to_input=False,
    )
    params = params_from_arrays(arrays, cfg, "topk")
    got = score(setup, params=params, cfg=cfg)
    expected = numpy_frs(model, arrays, pool, FEATURES, "sum", arch="topk")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_frs_independent_of_batching(setup):
    small = score(setup, tokens_per_batch=16)
    large = score(setup, tokens_per_batch=4096, bucket_multiple=64)
    np.testing.assert_allclose(small, large, rtol=1e-6)


def test_selection_stable_under_pool_order(setup):
    _, _, _, _, rows, pool = setup
    ids = [r["id"] for r in rows]
    scores = score(setup)
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = score(setup, examples=[pool[i] for i in order])
    np.testing.assert_allclose(shuffled, scores[order], rtol=1e-6)

    chosen = select_top(ids, scores, fraction=0.5)
    chosen_shuffled = select_top([ids[i] for i in order], shuffled, fraction=0.5)
    assert [ids[i] for i in chosen.indices] == [ids[order[i]] for i in chosen_shuffled.indices]


def test_frs_needs_features(setup):
    with pytest.raises(ValueError, match="at least one validated feature"):
        score(setup, features=[])


def test_frs_rejects_unknown_aggregate(setup):
    with pytest.raises(ValueError, match="aggregate='median'"):
        score(setup, aggregate="median")
