"""Loss and IFD numbers against a torch recomputation from the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from igds_jax.model_baselines import ifd_losses, mean_response_losses, response_alone
from tests import method_assets as assets
from train.tokenize import encode_response_alone

ROWS = assets.pool_rows(7) + assets.task_rows(3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = assets.load_tiny_model(tmp_path_factory.mktemp("model"))
    examples = assets.encode_rows(model.tokenizer, ROWS)
    return model, examples


def torch_mean_loss(model, ids: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of the tokens at positions ``targets`` of one unpadded sequence."""
    logits_tv = torch.from_numpy(assets.run_single(model, ids)[0])
    positions = torch.from_numpy(np.flatnonzero(targets))
    labels = torch.from_numpy(ids.astype(np.int64))[positions]
    return float(torch.nn.functional.cross_entropy(logits_tv[positions - 1], labels))


KWARGS = dict(tokens_per_batch=40, max_tokens=64, bucket_multiple=8)


def test_loss_matches_torch(setup):
    model, examples = setup
    got = mean_response_losses(model.graphdef, model.state, examples, **KWARGS)
    expected = [torch_mean_loss(model, e.input_ids, e.response_mask) for e in examples]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ifd_matches_torch(setup):
    model, examples = setup
    cond, uncond = ifd_losses(
        model.graphdef, model.state, examples, bos_token_id=assets.BOS, **KWARGS
    )
    for i, (row, e) in enumerate(zip(ROWS, examples, strict=True)):
        response = model.tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        alone = np.array([assets.BOS, *response, assets.EOS])
        expected_cond = torch_mean_loss(model, e.input_ids, e.response_mask)
        expected_uncond = torch_mean_loss(model, alone, np.arange(len(alone)) > 0)
        np.testing.assert_allclose(cond[i], expected_cond, rtol=1e-5)
        np.testing.assert_allclose(uncond[i], expected_uncond, rtol=1e-5)


def test_response_alone_matches_tokenizer_rule(setup):
    model, examples = setup
    for row, e in zip(ROWS, examples, strict=True):
        ours = response_alone(e, assets.BOS)
        theirs = encode_response_alone(
            model.tokenizer, row["prompt"], row["response"], max_tokens=64
        )
        np.testing.assert_array_equal(ours.input_ids, theirs.input_ids)
        np.testing.assert_array_equal(ours.response_mask, theirs.response_mask)


def test_response_alone_without_bos(setup):
    _, examples = setup
    e = examples[0]
    alone = response_alone(e, None)
    np.testing.assert_array_equal(alone.input_ids, e.input_ids[e.num_prompt_tokens :])
    assert not alone.response_mask[0]
    assert alone.response_mask[1:].all()


def test_truncated_response_keeps_same_targets(setup):
    model, _ = setup
    row = {"id": "long", "prompt": "is the apple red", "response": "yes " * 30}
    (e,) = assets.encode_rows(model.tokenizer, [row], max_tokens=12)
    alone = response_alone(e, assets.BOS)
    assert e.truncated
    np.testing.assert_array_equal(alone.input_ids[1:], e.input_ids[e.response_mask])


def test_ifd_reuses_given_conditioned_losses(setup):
    model, examples = setup
    given = np.arange(1.0, len(examples) + 1.0)
    cond, uncond = ifd_losses(
        model.graphdef, model.state, examples, bos_token_id=assets.BOS, conditioned=given, **KWARGS
    )
    np.testing.assert_array_equal(cond, given)
    for i, row in enumerate(ROWS):
        response = model.tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        alone = np.array([assets.BOS, *response, assets.EOS])
        expected = torch_mean_loss(model, alone, np.arange(len(alone)) > 0)
        np.testing.assert_allclose(uncond[i], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one per example"):
        ifd_losses(
            model.graphdef,
            model.state,
            examples,
            bos_token_id=assets.BOS,
            conditioned=given[:-1],
            **KWARGS,
        )
