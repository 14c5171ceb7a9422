"""Frequency recall against a NumPy recount, on an SAE with planted task features."""

from __future__ import annotations

import numpy as np
import pytest

from igds_jax.recall import frequency_recall, select_candidates
from tests import method_assets as assets
from tests.sae_reference import np_encode


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = assets.load_tiny_model(tmp_path_factory.mktemp("model"))
    arrays, params, cfg = assets.planted_sae()
    task = assets.encode_rows(model.tokenizer, assets.task_rows(10))
    reference = assets.encode_rows(model.tokenizer, assets.reference_rows(6))
    return model, arrays, params, cfg, task, reference


def recall(setup, **kwargs):
    model, _, params, cfg, task, _ = setup
    kwargs.setdefault("tokens_per_batch", 64)
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("bucket_multiple", 16)
    return frequency_recall(
        model.graphdef, model.state, params, cfg, task, hook_name=assets.HOOK, **kwargs
    )


def numpy_rates(model, arrays, examples, response_only=False):
    counts = np.zeros(assets.D_SAE)
    tokens = 0
    for e in examples:
        f = np_encode(arrays, "jumprelu", assets.captured_hook(model, e), apply_b_dec=False)
        mask = e.token_mask & (e.response_mask if response_only else True)
        counts += (f[mask] > 0).sum(0)
        tokens += int(mask.sum())
    return counts / tokens, tokens


def test_rates_match_numpy(setup):
    model, arrays, _, _, task, _ = setup
    result = recall(setup)
    expected, tokens = numpy_rates(model, arrays, task)
    assert result.num_tokens == tokens
    np.testing.assert_array_equal(result.rates_f, expected)


def test_rates_exclude_bos_and_padding(setup):
    model, arrays, _, _, task, _ = setup
    result = recall(setup)
    assert result.num_tokens == sum(e.length - 1 for e in task)  # every example starts with BOS


def test_rates_independent_of_batching(setup):
    small = recall(setup, tokens_per_batch=16)
    large = recall(setup, tokens_per_batch=1024, bucket_multiple=64)
    np.testing.assert_array_equal(small.rates_f, large.rates_f)


def test_planted_features_are_top(setup):
    result = recall(setup, num_candidates=5)
    assert set(result.candidates.tolist()) == {
        assets.YES_UP,
        assets.YES_DOWN,
        assets.APPLE,
        assets.PEAR,
        assets.THE,
    }
    # YES_UP and YES_DOWN fire on the same tokens: the tie goes to the lower id
    assert result.candidates[:2].tolist() == [assets.YES_UP, assets.YES_DOWN]


def test_dead_features_never_candidates(setup):
    result = recall(setup, num_candidates=assets.D_SAE)
    fired = set(np.flatnonzero(result.rates_f > 0).tolist())
    assert set(result.candidates.tolist()) == fired
    assert len(fired) < assets.D_SAE


def test_contrast_drops_common_word(setup):
    model, arrays, _, _, task, reference = setup
    result = recall(setup, reference_examples=reference, num_candidates=10)
    ref_rates, ref_tokens = numpy_rates(model, arrays, reference)
    task_rates, _ = numpy_rates(model, arrays, task)
    assert result.reference_num_tokens == ref_tokens
    np.testing.assert_allclose(result.scores_f, task_rates - ref_rates)
    assert assets.THE not in result.candidates.tolist()
    assert set(result.candidates.tolist()) == {
        assets.YES_UP,
        assets.YES_DOWN,
        assets.APPLE,
        assets.PEAR,
    }


def test_response_only_tokens(setup):
    model, arrays, _, _, task, _ = setup
    result = recall(setup, tokens="response", num_candidates=10)
    expected, tokens = numpy_rates(model, arrays, task, response_only=True)
    assert result.num_tokens == tokens
    np.testing.assert_array_equal(result.rates_f, expected)
    # fruit words and "the" are only in the prompts
    assert result.candidates.tolist() == [assets.YES_UP, assets.YES_DOWN]


def test_min_rate_threshold():
    rates = np.array([0.5, 0.0, 0.2, 0.3, 0.2])
    assert select_candidates(rates, min_rate=0.2).tolist() == [0, 3]
    assert select_candidates(rates, min_rate=0.0).tolist() == [0, 3, 2, 4]
    assert select_candidates(rates, num_candidates=2).tolist() == [0, 3]


def test_negative_contrast_never_candidate():
    scores = np.array([0.4, -0.1, 0.0, 0.2])
    assert select_candidates(scores, num_candidates=10).tolist() == [0, 3]
