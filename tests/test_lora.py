"""LoRA: zero-initialised B, merging, frozen base weights, saving, and a torch reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.loading import abstract_model, load_model
from models.transformer import forward
from tests.train_assets import make_tiny_run, tiny_config
from train.loop import run_finetune
from train.lora import LoraSpec, apply_lora, init_lora, load_lora, merge_lora, save_lora
from train.params import flatten_state, unflatten_state

torch = pytest.importorskip("torch")

TARGETS = ("q_proj", "v_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_tiny_run(tmp_path_factory.mktemp("tiny"))
    return root, load_model(root / "model")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A short LoRA run, so B is no longer zero."""
    root, _ = tiny
    out = tmp_path_factory.mktemp("lora_run")
    cfg = tiny_config(
        root,
        out,
        "lora.enabled=true",
        "lora.rank=4",
        "lora.alpha=8",
        f"lora.target_modules=[{','.join(TARGETS)}]",
        "optim.learning_rate=0.01",
        "loop.max_steps=6",
        "export.enabled=true",
    )
    return cfg, run_finetune(cfg)


def _logits(model, params, tokens):
    _, template = abstract_model(model.config, jnp.float32)
    logits, _ = forward(model.graphdef, unflatten_state(template, params), tokens)
    return np.asarray(logits)


def test_zero_b_leaves_outputs_unchanged(tiny):
    _, model = tiny
    params = flatten_state(model.state)
    spec = LoraSpec(4, 8.0, TARGETS)
    adapters = init_lora(params, spec, jax.random.key(0))
    assert len(adapters) == 3 * model.config.n_layers
    for path, ab in adapters.items():
        assert not np.any(np.asarray(ab["b"])), f"B of {path} is not zero"
        assert np.any(np.asarray(ab["a"])), f"A of {path} is zero"
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 24))
    base = _logits(model, params, tokens)
    adapted = _logits(model, apply_lora(params, adapters, spec.scale), tokens)
    np.testing.assert_array_equal(adapted, base)


def test_unknown_target_is_rejected(tiny):
    _, model = tiny
    params = flatten_state(model.state)
    with pytest.raises(ValueError, match="c_attn.*available"):
        init_lora(params, LoraSpec(4, 8.0, ("q_proj", "c_attn")), jax.random.key(0))


def test_training_moves_adapters_not_base(tiny, trained):
    root, base_model = tiny
    cfg, result = trained
    adapters, spec = load_lora(result.out_dir / "adapter")
    assert spec == LoraSpec(4, 8.0, TARGETS)
    assert all(np.abs(np.asarray(ab["b"])).max() > 0 for ab in adapters.values())
    fresh = flatten_state(load_model(root / "model").state)
    merged = result.params
    for path, value in fresh.items():
        if path in adapters:
            assert np.abs(np.asarray(merged[path]) - np.asarray(value)).max() > 0, path
        else:
            np.testing.assert_array_equal(np.asarray(merged[path]), np.asarray(value), path)


def _torch_lora_logits(model_dir, adapters, scale, tokens):
    """Base HF model with each adapted Linear's output plus scale * (x @ A) @ B."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    modules = dict(hf.named_modules())
    handles = []
    for path, ab in adapters.items():
        module = modules["model." + path.removesuffix(".kernel")]
        a = torch.as_tensor(np.array(ab["a"], np.float32))
        b = torch.as_tensor(np.array(ab["b"], np.float32))

        def hook(mod, inputs, output, a=a, b=b):
            return output + scale * (inputs[0] @ a) @ b

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return hf(torch.as_tensor(tokens)).logits.numpy()
    finally:
        for handle in handles:
            handle.remove()


def test_merged_equals_unmerged_torch_reference(tiny, trained):
    from transformers import AutoModelForCausalLM

    root, model = tiny
    _, result = trained
    adapters, spec = load_lora(result.out_dir / "adapter")
    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 40))
    reference = _torch_lora_logits(root / "model", adapters, spec.scale, tokens)

    params = flatten_state(model.state)
    merged = jax.device_get(merge_lora(params, adapters, scale=spec.scale))
    ours = _logits(model, merged, tokens)
    assert np.abs(ours - reference).max() <= 1e-4

    exported = AutoModelForCausalLM.from_pretrained(result.out_dir / "model").eval()
    with torch.no_grad():
        from_export = exported(torch.as_tensor(tokens)).logits.numpy()
    assert np.abs(from_export - reference).max() <= 1e-4
    base_logits = _logits(model, params, tokens)
    assert np.abs(base_logits - reference).max() > 1e-3, "the adapters must change the output"


def test_save_load_roundtrip(tiny, tmp_path):
    _, model = tiny
    params = flatten_state(model.state)
    spec = LoraSpec(2, 4.0, ("o_proj", "up_proj"))
    adapters = init_lora(params, spec, jax.random.key(3))
    adapters = {
        p: {"a": ab["a"], "b": ab["b"] + jax.random.normal(jax.random.key(i), ab["b"].shape)}
        for i, (p, ab) in enumerate(adapters.items())
    }
    loaded, loaded_spec = load_lora(save_lora(tmp_path / "adapter", adapters, spec))
    assert loaded_spec == spec
    assert sorted(loaded) == sorted(adapters)
    for path in adapters:
        for part in ("a", "b"):
            np.testing.assert_array_equal(np.asarray(loaded[path][part]), adapters[path][part])
