"""HF export: the written directory loads in transformers and gives the same logits."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from models.config import ModelConfig, RopeConfig
from models.loading import init_model, load_model
from models.transformer import forward
from train.export import ExportError, export_hf, hf_config_from_model, source_hf_config
from train.params import flatten_state

torch = pytest.importorskip("torch")

TOL = 1e-4


def _load_hf(directory):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    return model.eval()


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def _check_export(graphdef, state, cfg, out, *, hf_config=None, reference=None, seq=40):
    export_hf(out, flatten_state(state), cfg, hf_config=hf_config)
    exported = _load_hf(out)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, seq))
    ours, _ = forward(graphdef, state, tokens)
    got = _hf_logits(exported, tokens)
    assert np.abs(got - np.asarray(ours)).max() <= TOL
    if reference is not None:
        assert np.abs(got - _hf_logits(reference, tokens)).max() <= TOL
    return exported


def test_llama_from_hf_directory(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    source = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    ).eval()
    source.save_pretrained(tmp_path / "src")
    model = load_model(tmp_path / "src", load_tokenizer=False)
    hf_config = source_hf_config(model.source)
    assert hf_config["rope_parameters"]["rope_type"] == "llama3"
    _check_export(
        model.graphdef,
        model.state,
        model.config,
        tmp_path / "out",
        hf_config=hf_config,
        reference=source,
    )


def test_llama_generated_config_tied(tmp_path):
    cfg = ModelConfig(
        family="llama",
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=1,
        head_dim=8,
        d_ff=48,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope=RopeConfig(theta=5000.0, rope_type="linear", factor=2.0),
        eos_token_ids=(2, 3),
        bos_token_id=1,
    )
    graphdef, state = init_model(cfg, seed=1)
    exported = _check_export(graphdef, state, cfg, tmp_path / "out")
    assert exported.config.tie_word_embeddings
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == [2, 3]


def test_gpt2_fused_attention(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    source = GPT2LMHeadModel(
        GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ).eval()
    source.save_pretrained(tmp_path / "src")
    model = load_model(tmp_path / "src", load_tokenizer=False)
    _check_export(model.graphdef, model.state, model.config, tmp_path / "out", reference=source)


def test_qwen3_generated_config(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    source = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
        )
    ).eval()
    with torch.no_grad():
        for name, param in source.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.uniform_(0.5, 1.5)
    source.save_pretrained(tmp_path / "src")
    model = load_model(tmp_path / "src", load_tokenizer=False)
    # no hf_config: config.json is generated from the ModelConfig.
    _check_export(model.graphdef, model.state, model.config, tmp_path / "out", reference=source)


def test_gemma2_source_config(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    source = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
        )
    ).eval()
    source.save_pretrained(tmp_path / "src")
    model = load_model(tmp_path / "src", load_tokenizer=False)
    with pytest.raises(ExportError, match="gemma2"):
        hf_config_from_model(model.config)
    _check_export(
        model.graphdef,
        model.state,
        model.config,
        tmp_path / "out",
        hf_config=source_hf_config(model.source),
        reference=source,
        seq=24,
    )


def test_bfloat16_export_rounds_weights(tmp_path):
    from safetensors.numpy import load_file

    cfg = ModelConfig(
        family="llama",
        vocab_size=50,
        d_model=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        head_dim=8,
        d_ff=32,
    )
    _, state = init_model(cfg)
    params = flatten_state(state)
    export_hf(tmp_path, params, cfg, dtype="bfloat16")
    tensors = load_file(str(tmp_path / "model.safetensors"))
    kernel = np.asarray(params["layers.0.mlp.up_proj.kernel"])
    stored = tensors["model.layers.0.mlp.up_proj.weight"]
    assert stored.dtype.name == "bfloat16"
    expected = np.asarray(jnp.asarray(kernel.T, jnp.bfloat16))
    np.testing.assert_array_equal(stored.view(np.uint16), expected.view(np.uint16))
    assert _load_hf(tmp_path).dtype == torch.bfloat16


def test_mismatched_config_is_rejected(tmp_path):
    cfg = ModelConfig(
        family="llama",
        vocab_size=50,
        d_model=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        head_dim=8,
        d_ff=32,
    )
    _, state = init_model(cfg)
    hf_config = hf_config_from_model(cfg)
    hf_config["rms_norm_eps"] = 0.1
    with pytest.raises(ExportError, match="norm_eps"):
        export_hf(tmp_path, flatten_state(state), cfg, hf_config=hf_config)
    assert not (tmp_path / "model.safetensors").exists()
