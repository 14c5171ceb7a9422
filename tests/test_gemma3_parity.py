"""Gemma-3 text decoder vs transformers on tiny random configs.

Two models: a ``Gemma3ForCausalLM`` (``gemma3_text``) saved by transformers 5 with
per-layer-kind ``rope_parameters``, and a multimodal ``Gemma3ForConditionalGeneration``
whose config.json is rewritten in the older hub layout (``rope_theta``,
``rope_local_base_freq``, ``rope_scaling``, ``sliding_window_pattern``, a sparse
``text_config``). Weights drawn with std 0.2 and random norm weights make each quirk change
the logits. The sliding window (16) is far shorter than the 320-token prompt and than every
row of the padded batches.
"""

import json
import logging
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.config import RopeConfig  # noqa: E402
from models.gemma3 import config_from_hf  # noqa: E402
from models.hf_config import UnsupportedConfigError  # noqa: E402
from models.loading import abstract_model, load_model  # noqa: E402
from models.transformer import forward  # noqa: E402
from tests import hf_reference as ref  # noqa: E402

WINDOW = 16
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
KINDS = {"sliding_attention": "sliding", "full_attention": "full"}


def randomize_norms(hf_model) -> None:
    """Replace the zero-initialised ``(1 + w)`` norm weights with random ones."""
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=WINDOW,
        layer_types=LAYER_TYPES,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        },
        final_logit_softcapping=4.0,
        initializer_range=0.2,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    hf = Gemma3ForCausalLM(config).eval()
    randomize_norms(hf)
    return hf, ref.save_tiny(hf, tmp_path_factory.mktemp("gemma3_text"))


# A multimodal config.json in the hub's older layout: most text fields left to defaults.
LEGACY_TEXT_CONFIG = {
    "model_type": "gemma3_text",
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "sliding_window": WINDOW,
    "sliding_window_pattern": 2,
    "rope_theta": 5000.0,
    "rope_local_base_freq": 100.0,
    "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    "initializer_range": 0.2,
}
LEGACY_MULTIMODAL_CONFIG = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": LEGACY_TEXT_CONFIG,
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    },
    "mm_tokens_per_image": 4,
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "image_token_index": 262144,
    "eos_token_id": [1, 106],
    "tie_word_embeddings": False,
    "initializer_range": 0.2,
    "torch_dtype": "float32",
    "transformers_version": "4.50.0.dev0",
}


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(1)
    config = Gemma3Config.from_dict(LEGACY_MULTIMODAL_CONFIG)
    config.text_config._attn_implementation = "eager"
    hf = Gemma3ForConditionalGeneration(config).eval()
    randomize_norms(hf)
    saved = tmp_path_factory.mktemp("gemma3")
    hf.save_pretrained(saved, safe_serialization=True)
    (saved / "config.json").write_text(json.dumps(LEGACY_MULTIMODAL_CONFIG))
    return hf, load_model(saved, load_tokenizer=False)


def test_config_quirks(pair):
    cfg = pair[1].config
    assert cfg.layer_types == ("sliding", "sliding", "full", "sliding")
    assert cfg.sliding_window == WINDOW
    assert cfg.rope == RopeConfig(theta=1e6, rope_type="linear", factor=4.0)
    assert cfg.rope_local == RopeConfig(theta=10000.0)
    assert cfg.qk_norm
    assert cfg.attn_softcap is None
    assert cfg.final_softcap == 4.0
    assert cfg.query_pre_attn_scalar == 12.0


def test_long_prompt_logits_and_hidden_states(pair):
    ref.check_long_prompt(*pair)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(pair, side):
    ref.check_padded_batch(*pair, side=side)


def test_intervention_matches_torch_hook(pair):
    ref.check_intervention(*pair, layer=2)


def test_forward_from_layer_matches_hf(pair):
    ref.check_forward_from(*pair, layer=1)


def test_stop_at_layer_equals_full_capture(pair):
    ref.check_stop_at_layer(pair[1], layer=2)


def test_greedy_generation_matches_hf(pair):
    ref.check_greedy_generation(*pair)


QUIRKS = {
    "local RoPE base": {"rope_local": None},
    "linear RoPE scaling": {"rope": RopeConfig(theta=1e6)},
    "sliding window": {"layer_types": ("full",) * len(LAYER_TYPES)},
    "query_pre_attn_scalar": {"query_pre_attn_scalar": None},
    "embedding scale": {"embed_scale": False},
    "final soft-cap": {"final_softcap": None},
    "(1 + w) RMSNorm": {"norm_type": "rms"},
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_each_quirk_changes_logits(pair, quirk):
    """Dropping any one quirk breaks parity, so the parity tests above can fail."""
    hf, ours = pair
    tokens = np.random.default_rng(5).integers(0, ours.config.vocab_size, size=(1, 96))
    expected = ref.hf_logits(hf, tokens).logits.numpy()
    graphdef, _ = abstract_model(ours.config.replace(**QUIRKS[quirk]), jnp.float32)
    logits, _ = forward(graphdef, ours.state, tokens)
    diff = np.abs(np.asarray(logits) - expected).max()
    assert diff > 100 * ref.LOGIT_TOL, f"without the {quirk} the logits moved only {diff:.3g}"


def test_multimodal_legacy_config(multimodal):
    from transformers import Gemma3Config

    text = Gemma3Config.from_dict(LEGACY_MULTIMODAL_CONFIG).text_config
    cfg = multimodal[1].config
    assert cfg.layer_types == tuple(KINDS[k] for k in text.layer_types)
    full, local = text.rope_parameters["full_attention"], text.rope_parameters["sliding_attention"]
    assert cfg.rope == RopeConfig(theta=full["rope_theta"], rope_type="linear", factor=2.0)
    assert full["rope_type"] == "linear"
    assert full["factor"] == 2.0
    assert cfg.rope_local == RopeConfig(theta=local["rope_theta"])
    assert cfg.n_heads == text.num_attention_heads
    assert cfg.query_pre_attn_scalar == text.query_pre_attn_scalar
    assert cfg.eos_token_ids == (1, 106)
    assert not cfg.tie_embeddings


def test_multimodal_long_prompt(multimodal):
    ref.check_long_prompt(*multimodal)


def test_multimodal_padded_batch(multimodal):
    ref.check_padded_batch(*multimodal, side="left")


def vision_key_count(directory: Path) -> int:
    from safetensors import safe_open

    count = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="numpy") as f:
            count += sum(
                k.startswith(("vision_tower.", "multi_modal_projector.")) for k in f.keys()
            )
    return count


def test_multimodal_skips_vision_keys_with_count(multimodal, caplog):
    directory = Path(multimodal[1].source)
    n_vision = vision_key_count(directory)
    assert n_vision > 0
    with caplog.at_level(logging.INFO, logger="models.weights"):
        load_model(directory, load_tokenizer=False)
    assert f"skipped {n_vision} tensors" in caplog.text


def test_multimodal_model_language_model_layout(multimodal, tmp_path):
    """Keys under model.language_model. and an untied lm_head.weight load the same."""
    from safetensors.numpy import load_file, save_file

    hf, ours = multimodal
    renames = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ]
    source = Path(ours.source)
    shutil.copy(source / "config.json", tmp_path / "config.json")
    for file in source.glob("*.safetensors"):
        renamed = {}
        for key, tensor in load_file(str(file)).items():
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            renamed[key] = tensor
        save_file(renamed, str(tmp_path / file.name), metadata={"format": "pt"})
    assert "lm_head.weight" in load_file(str(next(tmp_path.glob("*.safetensors"))))

    moved = load_model(tmp_path, load_tokenizer=False)
    tokens = np.random.default_rng(7).integers(0, moved.config.vocab_size, size=(1, 40))
    logits, _ = forward(moved.graphdef, moved.state, tokens)
    expected = ref.hf_logits(hf, tokens).logits.numpy()
    assert np.abs(np.asarray(logits) - expected).max() <= ref.LOGIT_TOL


@pytest.mark.parametrize("n_layers", [7, 12])
def test_default_layer_pattern_matches_transformers(n_layers):
    from transformers import Gemma3TextConfig

    config = {"model_type": "gemma3_text", "num_hidden_layers": n_layers, "vocab_size": 64}
    expected = Gemma3TextConfig.from_dict(config).layer_types
    assert config_from_hf(config).layer_types == tuple(KINDS[k] for k in expected)


def with_field(config: dict, field: str, value, *, in_text_config: bool = False) -> dict:
    config = json.loads(json.dumps(config))
    (config["text_config"] if in_text_config else config)[field] = value
    return config


def test_unknown_math_field_is_rejected(pair, tmp_path):
    saved = tmp_path / "unknown"
    shutil.copytree(pair[1].source, saved)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(with_field(config, "attn_logit_scale", 2.0)))
    with pytest.raises(UnsupportedConfigError, match=r"attn_logit_scale=2\.0"):
        load_model(saved, load_tokenizer=False)


@pytest.mark.parametrize("in_text_config", [False, True])
def test_unknown_math_field_in_multimodal_config(in_text_config):
    config = with_field(
        LEGACY_MULTIMODAL_CONFIG, "attn_logit_scale", 2.0, in_text_config=in_text_config
    )
    with pytest.raises(UnsupportedConfigError, match=r"attn_logit_scale=2\.0"):
        config_from_hf(config, "config.json")


@pytest.mark.parametrize(
    ("field", "value", "in_text_config"),
    [
        ("attn_logit_softcapping", 50.0, False),
        ("attn_logit_softcapping", 50.0, True),
        ("final_logit_softcapping", 30.0, True),
        ("use_bidirectional_attention", True, False),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4}, False),
        ("layer_types", ["sliding_attention", "chunked_attention"] * 2, False),
    ],
)
def test_unsupported_values_name_the_field(pair, field, value, in_text_config):
    if in_text_config:
        config = with_field(LEGACY_MULTIMODAL_CONFIG, field, value, in_text_config=True)
    else:
        text = json.loads((Path(pair[1].source) / "config.json").read_text())
        config = with_field(text, field, value)
    with pytest.raises(UnsupportedConfigError, match=field):
        config_from_hf(config, "config.json")
