"""Llama 3.x port vs transformers on a tiny random config (llama3 RoPE scaling, GQA)."""

import pytest

torch = pytest.importorskip("torch")

from tests import hf_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(config).eval()
    return hf, ref.save_tiny(hf, tmp_path_factory.mktemp("llama"))


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


def test_greedy_generation_matches_hf(pair):
    ref.check_greedy_generation(*pair)


def test_forward_from_rejects_earlier_hooks(pair):
    import numpy as np

    from models.transformer import forward_from

    ours = pair[1]
    x = np.zeros((1, 4, ours.config.d_model), np.float32)
    mask = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="comes before start_layer=2"):
        forward_from(ours.graphdef, ours.state, x, 2, mask, capture=["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match="outside 0..3"):
        forward_from(ours.graphdef, ours.state, x, 4, mask)
