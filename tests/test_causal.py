"""Causal validation: planted helpful and harmful features, and a per-feature recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from igds_jax.causal import causal_validate
from models.generate import generate
from sae import feature_edit, make_feature_intervention
from tests import method_assets as assets
from train.metrics import exact_match

CANDIDATES = [assets.YES_UP, assets.YES_DOWN, assets.APPLE]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = assets.load_tiny_model(tmp_path_factory.mktemp("model"))
    _, params, cfg = assets.planted_sae()
    # no EOS: every target after a "yes" is another "yes"
    dev = assets.encode_rows(model.tokenizer, assets.task_rows(6), append_eos=False)
    return model, params, cfg, dev


def validate(setup, candidates=CANDIDATES, **kwargs):
    model, params, cfg, dev = setup
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("bucket_multiple", 4)
    kwargs.setdefault("hook_name", assets.HOOK)
    return causal_validate(model.graphdef, model.state, params, cfg, candidates, dev, **kwargs)


AMPLIFY = make_feature_intervention(assets.planted_sae()[2], "amplify")
STEER = make_feature_intervention(assets.planted_sae()[2], "steer")


def single_edit(fn, params, feature, value):
    """The edit of one feature on a one-row batch, a plain two-argument intervention."""
    edit = feature_edit(params, feature, value)
    return lambda h, mask: fn(h, mask, edit)


def numpy_response_loss(model, examples, intervention=None, hook=assets.HOOK):
    """Mean response-token cross-entropy, one unpadded example at a time."""
    total, count = 0.0, 0
    for e in examples:
        logits, _ = assets.run_single(
            model, e.input_ids, hook=hook, intervention=intervention, length=16
        )
        logp = assets.np_log_softmax(logits)
        for t in np.flatnonzero(e.response_mask):
            total -= logp[t - 1, e.input_ids[t]]
            count += 1
    return total / count


@pytest.fixture(scope="module")
def grouped(setup):
    # Dev lengths 9..12 share the 12-token bucket, so 216 tokens per call fit 18 rows,
    # which is 3 entries of 6 rows. The 4 entries (base + 3) take two calls, the second
    # one padded.
    return validate(setup, tokens_per_call=12 * 18)


def test_keeps_helpful_drops_harmful(grouped):
    assert grouped.feature_ids.tolist() == CANDIDATES
    assert grouped.deltas_c[0] > 1.0  # YES_UP lowers the loss
    assert grouped.deltas_c[1] < -1.0  # YES_DOWN raises it
    assert grouped.kept_c[0]
    assert not grouped.kept_c[1]


def test_deltas_match_per_feature_runs(setup, grouped):
    model, params, _, dev = setup
    base = numpy_response_loss(model, dev)
    np.testing.assert_allclose(grouped.base_value, base, rtol=1e-5)
    for c, fid in enumerate(CANDIDATES):
        edited = numpy_response_loss(model, dev, single_edit(AMPLIFY, params, fid, 4.0))
        np.testing.assert_allclose(grouped.values_c[c], edited, rtol=1e-5)
        np.testing.assert_allclose(grouped.deltas_c[c], base - edited, rtol=1e-5, atol=1e-6)
    assert grouped.num_scored_tokens == sum(int(e.response_mask.sum()) for e in dev)


def test_call_size_does_not_change_results(setup, grouped):
    one_per_call = validate(setup, tokens_per_call=12)
    np.testing.assert_allclose(one_per_call.values_c, grouped.values_c, rtol=1e-5)
    np.testing.assert_allclose(one_per_call.base_value, grouped.base_value, rtol=1e-5)


def test_steer_mode_matches_single_runs(setup):
    model, params, _, dev = setup
    result = validate(setup, candidates=[assets.FIVE], mode="steer", steer_coef=0.5)
    edited = numpy_response_loss(model, dev, single_edit(STEER, params, assets.FIVE, 0.5))
    np.testing.assert_allclose(result.values_c[0], edited, rtol=1e-5)


@pytest.mark.parametrize(
    "hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out"]
)
def test_other_hooks_match_single_runs(setup, hook):
    # resid hooks run the blocks before the edit once per batch; mlp_out runs whole passes
    model, params, _, dev = setup
    result = validate(setup, hook_name=hook, tokens_per_call=12 * 18)
    np.testing.assert_allclose(result.base_value, numpy_response_loss(model, dev), rtol=1e-5)
    for c, fid in enumerate(CANDIDATES):
        edit = single_edit(AMPLIFY, params, fid, 4.0)
        edited = numpy_response_loss(model, dev, edit, hook=hook)
        np.testing.assert_allclose(result.values_c[c], edited, rtol=1e-5)


def test_min_delta_filters(setup):
    result = validate(setup, min_delta=1e6, tokens_per_call=12 * 18)
    assert not result.kept_c.any()
    assert result.kept_ids.tolist() == []


def test_bad_feature_id(setup):
    with pytest.raises(ValueError, match="feature ids must be in 0..15"):
        validate(setup, candidates=[assets.D_SAE])


def test_accuracy_metric(setup):
    model, params, cfg, _ = setup
    rows = [
        {"id": f"q{i}", "prompt": f"what is {w} plus {w}", "response": "#### 5"}
        for i, w in enumerate(["one", "two", "three"])
    ]
    dev = assets.encode_rows(model.tokenizer, rows)
    decode = model.tokenizer.decode
    result = causal_validate(
        model.graphdef,
        model.state,
        params,
        cfg,
        [assets.FIVE, assets.YES_UP],
        dev,
        hook_name=assets.HOOK,
        mode="steer",
        steer_coef=1.0,
        metric="accuracy",
        references=[r["response"] for r in rows],
        decode=decode,
        max_new_tokens=3,
        # Prompts of 6 tokens pad to 8, plus 3 new tokens, so 66 tokens per call fit 6 rows,
        # which is 2 entries of 3 prompts. The 3 entries (base + 2) take two calls.
        tokens_per_call=66,
        bucket_multiple=4,
    )

    def accuracy(feature, coef):
        intervention = single_edit(STEER, params, feature, coef)
        hits = 0
        for e, row in zip(dev, rows, strict=True):
            prompt = e.input_ids[: e.num_prompt_tokens][None]
            out = generate(
                model.graphdef,
                model.state,
                prompt,
                max_new_tokens=3,
                interventions={assets.HOOK: intervention},
            )
            hits += exact_match(decode(out.tokens[0, : out.lengths[0]]), row["response"])
        return hits / len(rows)

    assert result.base_value == accuracy(assets.FIVE, 0.0)  # steering by 0: no edit
    five = accuracy(assets.FIVE, 1.0)
    assert five == 1.0  # steering along U[5] makes every answer "5"
    assert result.values_c.tolist() == [five, accuracy(assets.YES_UP, 1.0)]
    assert result.kept_c[0]
