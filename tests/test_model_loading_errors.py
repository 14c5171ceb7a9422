"""Bad model inputs give one clear error that names the file, key or field."""

import json

import numpy as np
import pytest

from models.hf_config import UnsupportedConfigError
from models.loading import load_model
from models.registry import UnknownArchitectureError
from models.weights import WeightLoadError

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "tie_word_embeddings": True,
}


def _write_llama(tmp_path, config=TINY_LLAMA, drop=None, extra=None):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps(config))
    d, f, kv = 16, 32, 8
    tensors = {
        "model.embed_tokens.weight": np.zeros((32, d), np.float32),
        "model.norm.weight": np.ones((d,), np.float32),
        "model.layers.0.input_layernorm.weight": np.ones((d,), np.float32),
        "model.layers.0.post_attention_layernorm.weight": np.ones((d,), np.float32),
        "model.layers.0.self_attn.q_proj.weight": np.zeros((d, d), np.float32),
        "model.layers.0.self_attn.k_proj.weight": np.zeros((kv, d), np.float32),
        "model.layers.0.self_attn.v_proj.weight": np.zeros((kv, d), np.float32),
        "model.layers.0.self_attn.o_proj.weight": np.zeros((d, d), np.float32),
        "model.layers.0.mlp.gate_proj.weight": np.zeros((f, d), np.float32),
        "model.layers.0.mlp.up_proj.weight": np.zeros((f, d), np.float32),
        "model.layers.0.mlp.down_proj.weight": np.zeros((d, f), np.float32),
    }
    if drop:
        del tensors[drop]
    tensors.update(extra or {})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_a_valid_tiny_checkpoint_loads(tmp_path):
    model = load_model(_write_llama(tmp_path), load_tokenizer=False)
    assert model.config.n_layers == 1


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_model(tmp_path / "nope.gguf")


def test_corrupt_safetensors_header(tmp_path):
    _write_llama(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    with pytest.raises(WeightLoadError, match="model.safetensors.*corrupt"):
        load_model(tmp_path, load_tokenizer=False)


def test_unknown_model_type(tmp_path):
    _write_llama(tmp_path, config={**TINY_LLAMA, "model_type": "mamba"})
    with pytest.raises(UnknownArchitectureError, match="model_type='mamba'.*supported: "):
        load_model(tmp_path, load_tokenizer=False)


def test_unsupported_config_field(tmp_path):
    _write_llama(tmp_path, config={**TINY_LLAMA, "attn_logit_scale": 2.0})
    with pytest.raises(UnsupportedConfigError, match="attn_logit_scale=2.0"):
        load_model(tmp_path, load_tokenizer=False)


def test_unused_checkpoint_key(tmp_path):
    _write_llama(tmp_path, extra={"model.layers.0.mystery.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightLoadError, match="not used by the model: model.layers.0.mystery"):
        load_model(tmp_path, load_tokenizer=False)


def test_missing_parameter(tmp_path):
    _write_llama(tmp_path, drop="model.layers.0.mlp.up_proj.weight")
    with pytest.raises(WeightLoadError, match="not filled.*layers.0.mlp.up_proj.kernel"):
        load_model(tmp_path, load_tokenizer=False)


def test_shape_mismatch(tmp_path):
    _write_llama(tmp_path, extra={"model.norm.weight": np.ones((5,), np.float32)})
    with pytest.raises(WeightLoadError, match=r"model.norm.weight.*\(5,\).*expected \(16,\)"):
        load_model(tmp_path, load_tokenizer=False)


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "tiny-mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnknownArchitectureError, match="GGUF architecture 'mamba'"):
        load_model(path, load_tokenizer=False)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"this is not gguf")
    with pytest.raises(WeightLoadError, match="broken.gguf: not a readable GGUF file"):
        load_model(path, load_tokenizer=False)
