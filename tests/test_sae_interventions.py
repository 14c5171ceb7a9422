"""Feature interventions (amplify, clamp, steer, splice) against NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae import (
    SAEConfig,
    amplify_feature,
    clamp_feature,
    feature_edit,
    make_feature_intervention,
    make_splice_intervention,
    params_from_arrays,
    sae_splice_intervention,
    steer_feature,
)
from tests.sae_reference import np_decode, np_encode, np_scale, random_arrays

D_IN, D_SAE, K = 12, 40, 4
B, T = 3, 6


def make(arch="jumprelu", normalize="none"):
    arrays = random_arrays(D_IN, D_SAE, seed=3)
    cfg = SAEConfig(
        architecture=arch,
        d_in=D_IN,
        d_sae=D_SAE,
        k=K if arch in ("topk", "batchtopk") else None,
        normalize_activations=normalize,
    )
    return arrays, params_from_arrays(arrays, cfg, "test"), cfg


def batch(seed=5):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, T, D_IN)).astype(np.float32) * 2
    mask = np.ones((B, T), np.int32)
    mask[0, :2] = 0  # left padding in row 0
    mask[2, -1] = 0
    return h, mask


def active_feature(arrays, arch, h, mask):
    """A feature that fires on several real tokens, so the edit is not trivially zero."""
    f = np_encode(arrays, arch, h, k=K)
    counts = ((f > 0) & (mask[..., None] > 0)).sum((0, 1))
    return int(np.argmax(counts))


def expected_edit(arrays, arch, h, mask, fid, mode, value, normalize="none"):
    f_i = np_encode(arrays, arch, h, k=K, normalize=normalize)[..., fid]
    s = np_scale(h, normalize, None)[..., 0]
    if mode == "amplify":
        coef = (value - 1) * f_i / s
    elif mode == "clamp":
        coef = (value - f_i) / s
    else:
        coef = np.full(h.shape[:2], value)
    out = h + coef[..., None] * arrays["W_dec"][fid].astype(np.float64)
    return np.where(mask[..., None] > 0, out, h)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk"])
def test_amplify_alpha_one_is_identity(arch):
    arrays, params, cfg = make(arch)
    h, mask = batch()
    fid = active_feature(arrays, arch, h, mask)
    fn = amplify_feature(params, cfg, fid, 1.0)
    out = np.asarray(jax.jit(fn)(jnp.asarray(h), jnp.asarray(mask)))
    np.testing.assert_array_equal(out, h)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk"])
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
def test_amplify_alpha_four_matches_formula(arch, normalize):
    arrays, params, cfg = make(arch, normalize)
    h, mask = batch()
    fid = active_feature(arrays, arch, h, mask)
    out = np.asarray(amplify_feature(params, cfg, fid, 4.0)(jnp.asarray(h), jnp.asarray(mask)))
    expected = expected_edit(arrays, arch, h, mask, fid, "amplify", 4.0, normalize)
    assert not np.allclose(expected, h), "chosen feature should fire"
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[0, :2], h[0, :2])  # padding untouched


def test_clamp_matches_formula():
    arrays, params, cfg = make("jumprelu")
    h, mask = batch()
    fid = active_feature(arrays, "jumprelu", h, mask)
    out = np.asarray(clamp_feature(params, cfg, fid, 2.5)(jnp.asarray(h), jnp.asarray(mask)))
    expected = expected_edit(arrays, "jumprelu", h, mask, fid, "clamp", 2.5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # the edit moves h only along W_dec[i]
    delta = (out - h)[mask > 0]
    w = arrays["W_dec"][fid]
    residual = delta - np.outer(delta @ w / (w @ w), w)
    assert np.abs(residual).max() < 1e-4


def test_steer_matches_formula():
    arrays, params, cfg = make("relu")
    h, mask = batch()
    out = np.asarray(steer_feature(params, cfg, 9, -3.0)(jnp.asarray(h), jnp.asarray(mask)))
    expected = expected_edit(arrays, "relu", h, mask, 9, "steer", -3.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["amplify", "clamp", "steer"])
@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_batched_rows_use_their_own_feature(mode, arch):
    arrays, params, cfg = make(arch)
    h, mask = batch()
    ids = [active_feature(arrays, arch, h, mask), 3, 17]
    values = [4.0, 0.5, 2.0]
    fn = jax.jit(make_feature_intervention(cfg, mode))
    out = np.asarray(fn(jnp.asarray(h), jnp.asarray(mask), feature_edit(params, ids, values)))
    for row in range(B):
        expected = expected_edit(
            arrays, arch, h[row : row + 1], mask[row : row + 1], ids[row], mode, values[row]
        )
        np.testing.assert_allclose(out[row], expected[0], rtol=1e-5, atol=1e-5)


def test_batched_single_id_broadcasts_and_reuses_compilation():
    arrays, params, cfg = make("jumprelu")
    h, mask = batch()
    fn = jax.jit(make_feature_intervention(cfg, "amplify"))
    fid = active_feature(arrays, "jumprelu", h, mask)
    out = np.asarray(fn(jnp.asarray(h), jnp.asarray(mask), feature_edit(params, fid, 4.0)))
    expected = expected_edit(arrays, "jumprelu", h, mask, fid, "amplify", 4.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    fn(jnp.asarray(h), jnp.asarray(mask), feature_edit(params, 2, 3.0))
    assert fn._cache_size() == 1


def test_batched_row_count_mismatch_raises():
    _, params, cfg = make("jumprelu")
    h, mask = batch()
    fn = make_feature_intervention(cfg, "amplify")
    with pytest.raises(ValueError, match="2 rows"):
        fn(jnp.asarray(h), jnp.asarray(mask), feature_edit(params, [1, 2], 4.0))


def test_unknown_mode_and_bad_feature_id():
    _, params, cfg = make("jumprelu")
    with pytest.raises(ValueError, match="ablate"):
        make_feature_intervention(cfg, "ablate")
    with pytest.raises(ValueError, match="out of range"):
        amplify_feature(params, cfg, D_SAE, 2.0)
    with pytest.raises(ValueError, match=r"\[-1\] are out of range"):
        feature_edit(params, [3, -1], 2.0)


def test_splice_replaces_real_tokens_with_reconstruction():
    arrays, params, cfg = make("jumprelu")
    h, mask = batch()
    recon = np_decode(arrays, np_encode(arrays, "jumprelu", h))
    expected = np.where(mask[..., None] > 0, recon, h)
    out = np.asarray(sae_splice_intervention(params, cfg)(jnp.asarray(h), jnp.asarray(mask)))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    dynamic = make_splice_intervention(cfg)
    out2 = np.asarray(jax.jit(dynamic)(jnp.asarray(h), jnp.asarray(mask), params))
    np.testing.assert_allclose(out2, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_activations_keep_dtype_and_identity():
    _, params, cfg = make("jumprelu")
    h, mask = batch()
    h16 = jnp.asarray(h, jnp.bfloat16)
    out = amplify_feature(params, cfg, 0, 1.0)(h16, jnp.asarray(mask))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h16))
