"""SAE file formats: SAELens round trips, Gemma Scope and Llama Scope loading, bad inputs."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from sae import (
    SAEConfig,
    encode,
    forward,
    from_hub,
    load_gemma_scope,
    load_llama_scope,
    load_sae,
    load_saelens,
    params_from_arrays,
    save_saelens,
)
from tests.sae_reference import np_decode, np_encode, random_arrays

D_IN, D_SAE, K = 16, 40, 4


def make(arch, normalize="none", factor=None, dtype="float32"):
    arrays = random_arrays(D_IN, D_SAE, seed=11)
    cfg = SAEConfig(
        architecture=arch,
        d_in=D_IN,
        d_sae=D_SAE,
        k=K if arch in ("topk", "batchtopk") else None,
        hook_name="blocks.7.hook_resid_post",
        normalize_activations=normalize,
        norm_scaling_factor=factor,
        dtype=dtype,
        model_name="tiny-llama",
        dataset_path="synthetic",
        context_size=128,
    )
    return arrays, params_from_arrays(arrays, cfg, "test"), cfg


def inputs(n=20, seed=2):
    return np.random.default_rng(seed).normal(size=(n, D_IN)).astype(np.float32) * 2


def assert_params_equal(a, b):
    for name, value in a.to_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(getattr(b, name)), name)


# --- SAELens -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
def test_saelens_round_trip_is_identical(tmp_path, arch, normalize):
    _, params, cfg = make(arch, normalize)
    save_saelens(params, cfg, tmp_path / "sae", metrics={"fvu": 0.1})
    loaded, loaded_cfg = load_saelens(tmp_path / "sae")
    assert loaded_cfg == cfg
    assert_params_equal(params, loaded)
    assert json.loads((tmp_path / "sae" / "metrics.json").read_text()) == {"fvu": 0.1}


def test_saelens_cfg_json_is_saelens_6_style(tmp_path):
    _, params, cfg = make("topk")
    save_saelens(params, cfg, tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert raw["architecture"] == "topk"
    assert raw["k"] == K
    assert raw["d_in"] == D_IN
    assert raw["d_sae"] == D_SAE
    assert raw["meta"]["hook_name"] == "blocks.7.hook_resid_post"
    assert raw["meta"]["hook_layer"] == 7
    assert raw["meta"]["sae_lens_version"].startswith("6.")
    weights = safetensors.numpy.load_file(tmp_path / "sae_weights.safetensors")
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert weights["W_enc"].shape == (D_IN, D_SAE)
    assert weights["W_dec"].shape == (D_SAE, D_IN)

    _, params, cfg = make("relu")
    save_saelens(params, cfg, tmp_path / "relu")
    assert json.loads((tmp_path / "relu" / "cfg.json").read_text())["architecture"] == "standard"


def test_batchtopk_saves_as_jumprelu_with_same_function(tmp_path):
    _, params, cfg = make("batchtopk")
    save_saelens(params, cfg, tmp_path)
    loaded, loaded_cfg = load_saelens(tmp_path)
    assert loaded_cfg.architecture == "jumprelu"
    assert_params_equal(params, loaded)
    x = jnp.asarray(inputs())
    np.testing.assert_array_equal(encode(params, cfg, x), encode(loaded, loaded_cfg, x))


def test_expected_average_factor_is_folded_on_save(tmp_path):
    arrays, params, cfg = make("jumprelu", "expected_average_only_in", 0.25)
    save_saelens(params, cfg, tmp_path)
    loaded, loaded_cfg = load_saelens(tmp_path)
    assert loaded_cfg.normalize_activations == "none"
    x = inputs()
    expected_f = np_encode(arrays, "jumprelu", x, normalize="expected_average_only_in", factor=0.25)
    expected_recon = np_decode(arrays, expected_f, 0.25)
    np.testing.assert_allclose(
        encode(loaded, loaded_cfg, jnp.asarray(x)), expected_f, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        forward(loaded, loaded_cfg, jnp.asarray(x)), expected_recon, rtol=1e-4, atol=1e-4
    )


def test_bfloat16_round_trip(tmp_path):
    _, params, cfg = make("jumprelu", dtype="bfloat16")
    assert params.W_enc.dtype == jnp.bfloat16
    save_saelens(params, cfg, tmp_path)
    loaded, loaded_cfg = load_saelens(tmp_path)
    assert loaded_cfg.dtype == "bfloat16"
    assert_params_equal(params, loaded)


def write_saelens(path, cfg: dict, weights: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    safetensors.numpy.save_file(weights, str(path / "sae_weights.safetensors"))


def test_old_saelens_config_loads(tmp_path):
    arrays = random_arrays(D_IN, D_SAE, 4)
    weights = {k: v for k, v in arrays.items() if k != "threshold"}
    old = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.2.hook_resid_pre",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "normalize_activations": False,
        "dtype": "torch.float32",
    }
    write_saelens(tmp_path, old, weights)
    params, cfg = load_saelens(tmp_path)
    assert cfg.architecture == "topk"
    assert cfg.k == 3
    assert cfg.hook_name == "blocks.2.hook_resid_pre"
    x = inputs()
    np.testing.assert_allclose(
        encode(params, cfg, jnp.asarray(x)), np_encode(arrays, "topk", x, k=3), rtol=1e-5, atol=1e-5
    )


def test_saelens_training_tensors_are_converted(tmp_path):
    arrays = random_arrays(D_IN, D_SAE, 4)
    weights = {k: v for k, v in arrays.items() if k != "threshold"}
    weights["log_threshold"] = np.log(arrays["threshold"])
    cfg = {
        "architecture": "jumprelu",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "meta": {"hook_name": "blocks.0.hook_resid_post"},
    }
    write_saelens(tmp_path, cfg, weights)
    params, _ = load_saelens(tmp_path)
    np.testing.assert_allclose(params.threshold, arrays["threshold"], rtol=1e-6)


# --- bad inputs ------------------------------------------------------------------------


def saved(tmp_path, arch="jumprelu"):
    _, params, cfg = make(arch)
    save_saelens(params, cfg, tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    weights = safetensors.numpy.load_file(tmp_path / "sae_weights.safetensors")
    return raw, weights


@pytest.mark.parametrize("field", ["d_in", "d_sae"])
def test_missing_cfg_field_names_file_and_field(tmp_path, field):
    raw, weights = saved(tmp_path)
    del raw[field]
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=rf"cfg\.json: missing required field '{field}'"):
        load_saelens(tmp_path)


def test_missing_hook_name_names_field(tmp_path):
    raw, weights = saved(tmp_path)
    del raw["meta"]["hook_name"]
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=r"cfg\.json: missing required field 'hook_name'"):
        load_saelens(tmp_path)


def test_missing_k_for_topk(tmp_path):
    raw, weights = saved(tmp_path, "topk")
    del raw["k"]
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=r"cfg\.json: missing required field 'k'"):
        load_saelens(tmp_path)


def test_unknown_architecture_names_file_and_field(tmp_path):
    raw, weights = saved(tmp_path)
    raw["architecture"] = "gated"
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=r"cfg\.json: field 'architecture'.*'gated'"):
        load_saelens(tmp_path)


def test_mismatched_shape_names_file_and_weight(tmp_path):
    raw, weights = saved(tmp_path)
    raw["d_in"] = D_IN + 1
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: weight 'W_enc' has shape"):
        load_saelens(tmp_path)


def test_nan_weight_names_file_and_weight(tmp_path):
    raw, weights = saved(tmp_path)
    weights["W_dec"][3, 1] = np.nan
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: weight 'W_dec' has 1 non"):
        load_saelens(tmp_path)


def test_missing_threshold_and_extra_tensor(tmp_path):
    raw, weights = saved(tmp_path)
    threshold = weights.pop("threshold")
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match="missing weight 'threshold'"):
        load_saelens(tmp_path)
    weights["threshold"] = threshold
    weights["W_gate"] = threshold
    write_saelens(tmp_path, raw, weights)
    with pytest.raises(ValueError, match="unexpected tensors.*W_gate"):
        load_saelens(tmp_path)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json: invalid JSON"):
        load_saelens(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SAE found"):
        load_sae(tmp_path / "nothing")


# --- Gemma Scope -----------------------------------------------------------------------


def test_gemma_scope_npz_loads_and_encodes(tmp_path):
    arrays = random_arrays(D_IN, D_SAE, 21)
    folder = tmp_path / "layer_14" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)

    params, cfg = load_sae(folder)
    assert cfg.architecture == "jumprelu"
    assert cfg.hook_name == "blocks.14.hook_resid_post"
    assert not cfg.apply_b_dec_to_input
    x = inputs()
    # Gemma Scope: relu(x @ W_enc + b_enc) * (pre > threshold), no b_dec subtraction
    pre = x.astype(np.float64) @ arrays["W_enc"] + arrays["b_enc"]
    expected_f = np.maximum(pre, 0) * (pre > arrays["threshold"])
    f = np.asarray(encode(params, cfg, jnp.asarray(x)))
    np.testing.assert_allclose(f, expected_f, rtol=1e-5, atol=1e-5)
    expected_recon = expected_f @ arrays["W_dec"] + arrays["b_dec"]
    np.testing.assert_allclose(
        forward(params, cfg, jnp.asarray(x)), expected_recon, rtol=1e-4, atol=1e-4
    )

    _, cfg_override = load_gemma_scope(folder / "params.npz", layer=3)
    assert cfg_override.hook_name == "blocks.3.hook_resid_post"


def test_gemma_scope_errors(tmp_path):
    arrays = random_arrays(D_IN, D_SAE, 21)
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(ValueError, match="pass layer=L"):
        load_gemma_scope(tmp_path)
    del arrays["threshold"]
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(ValueError, match=r"params\.npz: missing array 'threshold'"):
        load_gemma_scope(tmp_path, layer=1)


# --- Llama Scope -----------------------------------------------------------------------


def write_llama_scope(path, hp_overrides=None, n_in=7.3, n_out=7.3, seed=31):
    rng = np.random.default_rng(seed)
    d = D_IN

    enc_w = (rng.normal(size=(D_SAE, d)) / math.sqrt(d)).astype(np.float32)  # [d_sae, d]
    enc_b = (0.1 * rng.normal(size=D_SAE)).astype(np.float32)
    # decoder columns with norms far from 1, so the decoder-norm gate matters
    dec_w = (rng.normal(size=(d, D_SAE)) * rng.uniform(0.2, 3.0, size=D_SAE)).astype(np.float32)
    dec_b = (0.3 * rng.normal(size=d)).astype(np.float32)

    hp = {
        "d_model": d,
        "d_sae": D_SAE,
        "hook_point_in": "blocks.9.hook_resid_post",
        "hook_point_out": "blocks.9.hook_resid_post",
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.4,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": n_in, "out": n_out},
        "sparsity_include_decoder_norm": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "top_k": 50,
    }
    hp.update(hp_overrides or {})

    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (path / "hyperparams.json").write_text(json.dumps(hp))
    raw = {
        "encoder.weight": enc_w,
        "encoder.bias": enc_b,
        "decoder.weight": dec_w,
        "decoder.bias": dec_b,
    }
    safetensors.numpy.save_file(raw, str(path / "checkpoints" / "final.safetensors"))
    return hp, raw


def llama_scope_reference(hp, raw, x):
    """The Llama Scope forward on raw activations, from the raw checkpoint arrays."""
    d = hp["d_model"]
    s_in = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(d) / hp["dataset_average_activation_norm"]["out"]
    enc = raw["encoder.weight"].astype(np.float64)
    dec = raw["decoder.weight"].astype(np.float64)
    pre = (x * s_in) @ enc.T + raw["encoder.bias"]
    dec_norm = np.linalg.norm(dec, axis=0)
    f = pre * (pre * dec_norm > hp["jump_relu_threshold"])
    recon = (f @ dec.T + raw["decoder.bias"]) / s_out
    return f, recon


@pytest.mark.parametrize("n_in,n_out", [(7.3, 7.3), (5.0, 11.0)])
def test_llama_scope_folds_dataset_norm(tmp_path, n_in, n_out):
    hp, raw = write_llama_scope(tmp_path, n_in=n_in, n_out=n_out)
    params, cfg = load_sae(tmp_path)
    assert cfg.hook_name == "blocks.9.hook_resid_post"
    assert cfg.normalize_activations == "none"
    x = inputs(50)
    expected_f, expected_recon = llama_scope_reference(hp, raw, x)
    f = np.asarray(encode(params, cfg, jnp.asarray(x)))
    assert (f > 0).any()
    assert (f == 0).any()
    np.testing.assert_allclose(f, expected_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        forward(params, cfg, jnp.asarray(x)), expected_recon, rtol=1e-4, atol=1e-4
    )


def test_llama_scope_errors(tmp_path):
    hp, _ = write_llama_scope(tmp_path)
    del hp["dataset_average_activation_norm"]
    (tmp_path / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(
        ValueError, match=r"hyperparams\.json: missing required field 'dataset_average"
    ):
        load_llama_scope(tmp_path)
    write_llama_scope(tmp_path, {"hook_point_out": "blocks.9.hook_mlp_out"})
    with pytest.raises(ValueError, match="transcoders"):
        load_llama_scope(tmp_path)
    write_llama_scope(tmp_path, {"d_sae": D_SAE + 2})
    with pytest.raises(ValueError, match=r"final\.safetensors: encoder\.weight"):
        load_llama_scope(tmp_path)


# --- hub -------------------------------------------------------------------------------


def test_from_hub_offline_raises_clear_error(tmp_path):
    with pytest.raises(ConnectionError, match="load_sae"):
        from_hub(
            "google/gemma-scope-2b-pt-res",
            "layer_1/width_16k/average_l0_9",
            cache_dir=tmp_path,
            local_files_only=True,
        )
