"""Qwen3 port vs transformers on tiny random configs (q/k norms, GQA, sliding window)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.hf_config import UnsupportedConfigError  # noqa: E402
from models.loading import load_model  # noqa: E402
from tests import hf_reference as ref  # noqa: E402


def tiny_config(**changes):
    from transformers import Qwen3Config

    settings = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        # Not hidden_size // num_attention_heads (12): the port must read it.
        head_dim=16,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
    )
    settings.update(changes)
    return Qwen3Config(**settings)


def build(config, tmp_path):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(config).eval()
    # Random q/k norm weights, so a port that skips or misplaces them fails.
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return hf, ref.save_tiny(hf, tmp_path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build(tiny_config(), tmp_path_factory.mktemp("qwen3"))


def test_long_prompt_logits_and_hidden_states(pair):
    ref.check_long_prompt(*pair)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(pair, side):
    ref.check_padded_batch(*pair, side=side)


def test_intervention_matches_torch_hook(pair):
    ref.check_intervention(*pair, layer=1)


def test_forward_from_layer_matches_hf(pair):
    ref.check_forward_from(*pair, layer=1)


def test_stop_at_layer_equals_full_capture(pair):
    ref.check_stop_at_layer(pair[1], layer=1)


def test_greedy_generation(pair):
    ref.check_greedy_generation(*pair)


def test_tied_embeddings(tmp_path):
    hf, ours = build(tiny_config(tie_word_embeddings=True, attention_bias=True), tmp_path)
    assert ours.config.tie_embeddings
    assert ours.config.qkv_bias and ours.config.o_bias
    ref.check_long_prompt(hf, ours)


def test_sliding_window_layers(tmp_path):
    from transformers import Qwen3ForCausalLM

    config = tiny_config(use_sliding_window=True, sliding_window=24, max_window_layers=1)
    hf, ours = build(config, tmp_path)
    assert ours.config.layer_types == ("full", "sliding", "sliding")
    assert ours.config.sliding_window == 24
    tokens = ref.check_long_prompt(hf, ours)

    # The window must matter on this prompt, or the check above proves nothing.
    full = Qwen3ForCausalLM(tiny_config()).eval()
    full.load_state_dict(hf.state_dict())
    windowed = ref.hf_logits(hf, tokens).logits.numpy()
    unwindowed = ref.hf_logits(full, tokens).logits.numpy()
    assert np.abs(windowed - unwindowed).max() > 1e-3


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_math_field_rejected(pair, tmp_path):
    pair[0].save_pretrained(tmp_path, safe_serialization=True)
    edit_config(tmp_path, attn_logit_scale=2.0)
    with pytest.raises(UnsupportedConfigError, match="attn_logit_scale=2.0"):
        load_model(tmp_path, load_tokenizer=False)


def test_unknown_layer_type_rejected(pair, tmp_path):
    pair[0].save_pretrained(tmp_path, safe_serialization=True)
    edit_config(tmp_path, layer_types=["full_attention", "chunked_attention", "full_attention"])
    with pytest.raises(UnsupportedConfigError, match="chunked_attention"):
        load_model(tmp_path, load_tokenizer=False)


def test_unsupported_rope_type_rejected(pair, tmp_path):
    pair[0].save_pretrained(tmp_path, safe_serialization=True)
    edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0})
    with pytest.raises(UnsupportedConfigError, match="yarn"):
        load_model(tmp_path, load_tokenizer=False)
