"""SAE architectures and input normalizations against plain NumPy formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae import (
    SAEConfig,
    check_hook_dim,
    decode,
    encode,
    encode_subset,
    forward,
    input_scale,
    params_from_arrays,
)
from tests.sae_reference import np_decode, np_encode, np_scale, random_arrays

D_IN, D_SAE, K = 16, 48, 5
ARCHS = ["relu", "jumprelu", "topk", "batchtopk"]
NORMS = [
    ("none", None),
    ("expected_average_only_in", 0.37),
    ("constant_norm_rescale", None),
]


def make(arch, normalize="none", factor=None, apply_b_dec=True, seed=0):
    arrays = random_arrays(D_IN, D_SAE, seed)
    cfg = SAEConfig(
        architecture=arch,
        d_in=D_IN,
        d_sae=D_SAE,
        k=K if arch in ("topk", "batchtopk") else None,
        hook_name="blocks.3.hook_resid_post",
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalize,
        norm_scaling_factor=factor,
    )
    params = params_from_arrays(arrays, cfg, "test")
    if arch in ("relu", "topk"):
        arrays = {**arrays, "threshold": np.zeros(D_SAE, np.float32)}
    return arrays, params, cfg


def inputs(shape=(3, 5), seed=1):
    return np.random.default_rng(seed).normal(size=shape + (D_IN,)).astype(np.float32) * 2.0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("normalize,factor", NORMS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_match_numpy(arch, normalize, factor, apply_b_dec):
    arrays, params, cfg = make(arch, normalize, factor, apply_b_dec)
    x = inputs()
    expected_f = np_encode(
        arrays, arch, x, k=K, apply_b_dec=apply_b_dec, normalize=normalize, factor=factor
    )
    f = np.asarray(encode(params, cfg, jnp.asarray(x)))
    assert f.shape == (3, 5, D_SAE)
    np.testing.assert_allclose(f, expected_f, rtol=1e-5, atol=1e-5)
    assert (f > 0).any(), "random SAE should have active features"

    scale = np_scale(x, normalize, factor)
    recon = np.asarray(forward(params, cfg, jnp.asarray(x)))
    np.testing.assert_allclose(recon, np_decode(arrays, expected_f, scale), rtol=1e-4, atol=1e-4)

    decoded = decode(params, cfg, jnp.asarray(f), scale_n1=input_scale(cfg, jnp.asarray(x)))
    np.testing.assert_allclose(
        np.asarray(decoded), np_decode(arrays, f, scale), rtol=1e-4, atol=1e-4
    )


def test_topk_keeps_at_most_k_per_token():
    _, params, cfg = make("topk")
    f = np.asarray(encode(params, cfg, jnp.asarray(inputs((40,)))))
    assert ((f > 0).sum(-1) <= K).all()
    assert ((f > 0).sum(-1) == K).mean() > 0.5


def test_encode_under_jit_with_static_config():
    arrays, params, cfg = make("jumprelu")
    jitted = jax.jit(encode, static_argnums=1)
    x = inputs()
    np.testing.assert_allclose(
        np.asarray(jitted(params, cfg, jnp.asarray(x))),
        np_encode(arrays, "jumprelu", x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_constant_norm_decode_requires_scale():
    _, params, cfg = make("relu", "constant_norm_rescale")
    with pytest.raises(ValueError, match="scale_n1"):
        decode(params, cfg, jnp.zeros((2, D_SAE)))


def test_constant_norm_zero_token_is_finite():
    _, params, cfg = make("relu", "constant_norm_rescale")
    out = forward(params, cfg, jnp.zeros((2, D_IN)))
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("normalize,factor", NORMS)
def test_encode_subset_equals_full_columns(arch, normalize, factor):
    _, params, cfg = make(arch, normalize, factor)
    x = jnp.asarray(inputs())
    ids = np.array([7, 0, 47, 7, 13])
    full = np.asarray(encode(params, cfg, x))[..., ids]
    subset = np.asarray(encode_subset(params, cfg, x, ids))
    assert subset.shape == (3, 5, 5)
    np.testing.assert_allclose(subset, full, rtol=1e-6, atol=1e-6)


def test_encode_subset_rejects_topk():
    _, params, cfg = make("topk")
    with pytest.raises(ValueError, match="topk"):
        encode_subset(params, cfg, jnp.zeros((2, D_IN)), np.array([1]))


def test_encode_subset_rejects_out_of_range_ids():
    _, params, cfg = make("relu")
    with pytest.raises(ValueError, match=rf"\[{D_SAE}\] are out of range"):
        encode_subset(params, cfg, jnp.zeros((2, D_IN)), np.array([0, D_SAE]))


def test_encode_subset_gathers_before_matmul():
    # The subset path must not compute all d_sae pre-activations: its jaxpr has no
    # [*, d_sae]-shaped matmul output.
    _, params, cfg = make("jumprelu")
    fn = functools.partial(encode_subset, params, cfg)
    jaxpr = jax.make_jaxpr(fn)(jnp.zeros((4, D_IN)), jnp.array([1, 2]))
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots
    for eqn in dots:
        assert eqn.outvars[0].aval.shape[-1] != D_SAE


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="gated"):
        SAEConfig(architecture="gated", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="k"):
        SAEConfig(architecture="topk", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="layer_norm"):
        SAEConfig(architecture="relu", d_in=4, d_sae=8, normalize_activations="layer_norm")
    assert SAEConfig(architecture="standard", d_in=4, d_sae=8).architecture == "relu"


def test_check_hook_dim():
    cfg = SAEConfig(architecture="relu", d_in=576, d_sae=8, hook_name="blocks.1.hook_resid_post")
    check_hook_dim(cfg, 576)
    with pytest.raises(ValueError, match="d_in=576.*960"):
        check_hook_dim(cfg, 960)


def test_sae_package_imports_no_model_code():
    import ast
    import pathlib

    import sae

    for path in pathlib.Path(sae.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in ("models", "igds_jax", "train"), f"{path.name} imports {name}"
