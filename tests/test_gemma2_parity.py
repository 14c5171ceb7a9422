"""Gemma-2 port vs transformers on a tiny random config.

The config makes every Gemma-2 quirk change the logits. Weights drawn with std 0.2 push
attention scores and logits into the non-linear range of the soft-caps. Norm weights are
random, so ``(1 + w)`` differs from ``w``. The sliding window (16) is far shorter than the
320-token prompt and than every row of the padded batches.
"""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.gemma2 import config_from_hf  # noqa: E402
from models.hf_config import UnsupportedConfigError  # noqa: E402
from models.loading import abstract_model, load_model  # noqa: E402
from models.transformer import forward  # noqa: E402
from tests import hf_reference as ref  # noqa: E402

WINDOW = 16
N_LAYERS = 4


def tiny_hf_config():
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=WINDOW,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0,
        initializer_range=0.2,
        max_position_embeddings=512,
        attn_implementation="eager",  # transformers' sdpa path cannot soft-cap scores
    )


def randomize_norms(hf_model) -> None:
    """Replace the zero-initialised ``(1 + w)`` norm weights with random ones."""
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(tiny_hf_config()).eval()
    randomize_norms(hf)
    return hf, ref.save_tiny(hf, tmp_path_factory.mktemp("gemma2"))


def test_config_quirks(pair):
    cfg = pair[1].config
    assert cfg.layer_types == ("sliding", "full", "sliding", "full")
    assert cfg.sliding_window == WINDOW
    assert cfg.attn_softcap == 3.0
    assert cfg.final_softcap == 4.0
    assert cfg.query_pre_attn_scalar == 12.0
    assert cfg.norm_type == "rms_gemma"
    assert cfg.act == "gelu_tanh"
    assert cfg.embed_scale
    assert cfg.sandwich_norm
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
    ref.check_stop_at_layer(pair[1], layer=2)


def test_greedy_generation_matches_hf(pair):
    ref.check_greedy_generation(*pair)


QUIRKS = {
    "attention soft-cap": {"attn_softcap": None},
    "final soft-cap": {"final_softcap": None},
    "sliding window": {"layer_types": ("full",) * N_LAYERS},
    "query_pre_attn_scalar": {"query_pre_attn_scalar": None},
    "embedding scale": {"embed_scale": False},
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


def legacy_config(saved_dir) -> dict:
    """The saved config rewritten as older files on the hub write it."""
    config = json.loads((saved_dir / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    del config["layer_types"]
    del config["use_bidirectional_attention"]
    config.update(
        rope_theta=theta,
        hidden_act=config["hidden_activation"],
        sliding_window_size=config["sliding_window"],
        cache_implementation="hybrid",
        torch_dtype="float32",
    )
    return config


def test_legacy_config_matches_transformers(pair, tmp_path):
    """An older config.json (rope_theta, no layer_types) gives the same model."""
    from transformers import Gemma2Config

    hf, ours = pair
    saved = tmp_path / "legacy"
    shutil.copytree(ours.source, saved)
    config = legacy_config(saved)
    (saved / "config.json").write_text(json.dumps(config))

    hf_parsed = Gemma2Config.from_dict(config)
    cfg = config_from_hf(config, "legacy")
    kinds = {"sliding_attention": "sliding", "full_attention": "full"}
    assert cfg.layer_types == tuple(kinds[k] for k in hf_parsed.layer_types)
    assert cfg.rope.theta == hf_parsed.rope_parameters["rope_theta"]

    legacy = load_model(saved, load_tokenizer=False)
    tokens = np.random.default_rng(6).integers(0, cfg.vocab_size, size=(1, 64))
    logits, _ = forward(legacy.graphdef, legacy.state, tokens)
    expected = ref.hf_logits(hf, tokens).logits.numpy()
    assert np.abs(np.asarray(logits) - expected).max() <= ref.LOGIT_TOL


def test_unknown_math_field_is_rejected(pair, tmp_path):
    saved = tmp_path / "unknown"
    shutil.copytree(pair[1].source, saved)
    config = json.loads((saved / "config.json").read_text())
    config["attn_logit_scale"] = 2.0
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=r"attn_logit_scale=2\.0"):
        load_model(saved, load_tokenizer=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_bidirectional_attention", True),
        ("hidden_activation", "silu"),
        ("layer_types", ["sliding_attention", "chunked_attention"] * 2),
        ("sliding_window_size", 8),
        ("hidden_act", "gelu"),
    ],
)
def test_unsupported_values_name_the_field(pair, field, value):
    config = json.loads((Path(pair[1].source) / "config.json").read_text())
    config[field] = value
    with pytest.raises(UnsupportedConfigError, match=field):
        config_from_hf(config, "config.json")
