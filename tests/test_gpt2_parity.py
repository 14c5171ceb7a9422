"""GPT-2 port vs transformers on tiny random configs (LayerNorm, learned positions, Conv1D)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.hf_config import UnsupportedConfigError  # noqa: E402
from models.loading import load_model  # noqa: E402
from models.weights import WeightLoadError  # noqa: E402
from tests import hf_reference as ref  # noqa: E402


def tiny_config(**changes):
    from transformers import GPT2Config

    settings = dict(
        vocab_size=97,
        n_embd=48,
        n_layer=3,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(changes)
    return GPT2Config(**settings)


def random_model(config):
    """Build a GPT2LMHeadModel with random biases and norm weights.

    transformers starts them at 0 and 1, which would hide a bias or norm loaded into the
    wrong place.
    """
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif ".ln_" in name:
                param.uniform_(0.5, 1.5)
    return hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = random_model(tiny_config())
    return hf, ref.save_tiny(hf, tmp_path_factory.mktemp("gpt2"))


def test_config_mapping(pair):
    cfg = pair[1].config
    assert cfg.norm_type == "layernorm"
    assert cfg.act == "gelu_tanh"
    assert not cfg.gated_mlp
    assert cfg.learned_positions
    assert cfg.max_positions == 512
    assert cfg.d_ff == 4 * 48
    assert cfg.tie_embeddings


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


def test_untied_head_unscaled_attention(tmp_path):
    config = tiny_config(
        tie_word_embeddings=False,
        scale_attn_weights=False,
        n_inner=72,
        activation_function="gelu",
    )
    hf = random_model(config)
    ours = ref.save_tiny(hf, tmp_path)
    assert not ours.config.tie_embeddings
    assert ours.config.attn_scale == 1.0
    assert ours.config.d_ff == 72
    assert ours.config.act == "gelu"
    ref.check_long_prompt(hf, ours)


def test_base_model_checkpoint_with_buffers(pair, tmp_path):
    """Keys without ``transformer.`` and with causal-mask buffers, as the original gpt2 files."""
    from safetensors.torch import save_file

    hf, _ = pair
    tensors = {
        name.removeprefix("transformer."): param.detach().clone().contiguous()
        for name, param in hf.transformer.named_parameters(prefix="transformer")
    }
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf.config.to_json_file(tmp_path / "config.json")

    ours = load_model(tmp_path, load_tokenizer=False)
    ref.check_long_prompt(hf, ours)


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("activation_function", "relu"),
        ("add_cross_attention", True),
    ],
)
def test_unsupported_field_rejected(pair, tmp_path, field, value):
    pair[0].save_pretrained(tmp_path, safe_serialization=True)
    edit_config(tmp_path, **{field: value})
    with pytest.raises(UnsupportedConfigError, match=field):
        load_model(tmp_path, load_tokenizer=False)


def test_stored_head_with_tied_config_rejected(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    pair[0].save_pretrained(tmp_path, safe_serialization=True)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["lm_head.weight"] = torch.from_numpy(np.ones((97, 48), np.float32))
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(WeightLoadError, match="tie_word_embeddings"):
        load_model(tmp_path, load_tokenizer=False)
