"""Generation options and loader paths beyond the per-family parity tests."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.generate import generate  # noqa: E402
from models.loading import load_model  # noqa: E402
from models.transformer import forward  # noqa: E402
from tests import hf_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=None,
        bos_token_id=None,
    )
    hf = LlamaForCausalLM(config).eval()
    return hf, ref.save_tiny(hf, tmp_path_factory.mktemp("gen"))


def _prompts(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 61, size=(3, 7))
    mask = np.ones_like(tokens)
    mask[1, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding: re-packed to the left internally
    return tokens, mask


def test_intervention_during_generation_matches_torch_hook(pair):
    hf, ours = pair
    tokens = np.random.default_rng(3).integers(1, 61, size=(2, 6))
    vec = np.random.default_rng(4).normal(size=32).astype(np.float32) * 2

    def torch_hook(module, args, output):
        return output + torch.as_tensor(vec)

    handle = hf.model.layers[0].register_forward_hook(torch_hook)
    try:
        with torch.no_grad():
            expected = hf.generate(
                torch.as_tensor(tokens), do_sample=False, max_new_tokens=8, pad_token_id=0
            )[:, 6:].numpy()
    finally:
        handle.remove()
    out = generate(
        ours.graphdef,
        ours.state,
        tokens,
        max_new_tokens=8,
        eos_token_ids=(),
        interventions={"blocks.0.hook_resid_post": lambda x, m: x + vec},
    )
    np.testing.assert_array_equal(out.tokens, expected)
    plain = generate(ours.graphdef, ours.state, tokens, max_new_tokens=8, eos_token_ids=())
    assert (plain.tokens != out.tokens).any(), "the intervention must change the output"


def test_right_padding_is_repacked(pair):
    _, ours = pair
    tokens, mask = _prompts()
    batched = generate(ours.graphdef, ours.state, tokens, mask, max_new_tokens=5, eos_token_ids=())
    for r in range(3):
        alone = generate(
            ours.graphdef,
            ours.state,
            tokens[r : r + 1, mask[r] == 1],
            max_new_tokens=5,
            eos_token_ids=(),
        )
        np.testing.assert_array_equal(batched.tokens[r], alone.tokens[0])


def test_tiny_top_p_is_greedy_and_sampling_is_seeded(pair):
    _, ours = pair
    tokens, mask = _prompts(1)
    greedy = generate(ours.graphdef, ours.state, tokens, mask, max_new_tokens=6, eos_token_ids=())
    nucleus = generate(
        ours.graphdef,
        ours.state,
        tokens,
        mask,
        max_new_tokens=6,
        eos_token_ids=(),
        temperature=1.0,
        top_p=1e-6,
        seed=5,
    )
    np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)
    a = generate(
        ours.graphdef,
        ours.state,
        tokens,
        mask,
        max_new_tokens=6,
        eos_token_ids=(),
        temperature=1.5,
        seed=7,
    )
    b = generate(
        ours.graphdef,
        ours.state,
        tokens,
        mask,
        max_new_tokens=6,
        eos_token_ids=(),
        temperature=1.5,
        seed=7,
    )
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_sampling_follows_the_model_distribution(pair):
    """First sampled token frequencies match softmax(logits / T) (chi-square style bound)."""
    _, ours = pair
    prompt = np.array([[5, 9, 13]])
    logits, _ = forward(ours.graphdef, ours.state, prompt)
    probs = np.asarray(torch.softmax(torch.tensor(np.asarray(logits)[0, -1]) / 2.0, -1))
    batch = np.repeat(prompt, 2000, axis=0)
    out = generate(
        ours.graphdef,
        ours.state,
        batch,
        max_new_tokens=1,
        eos_token_ids=(),
        temperature=2.0,
        seed=11,
    )
    freq = np.bincount(out.tokens[:, 0], minlength=61) / 2000
    assert np.abs(freq - probs).max() < 0.04


def test_eos_stops_rows_and_pads(pair):
    _, ours = pair
    tokens, mask = _prompts(2)
    free = generate(ours.graphdef, ours.state, tokens, mask, max_new_tokens=6, eos_token_ids=())
    eos = int(free.tokens[0, 2])  # row 0 will hit this token at step 2
    out = generate(
        ours.graphdef,
        ours.state,
        tokens,
        mask,
        max_new_tokens=6,
        eos_token_ids=(eos,),
        pad_token_id=0,
    )
    assert out.finished[0] and out.lengths[0] <= 3
    n = out.lengths[0]
    assert out.tokens[0, n - 1] == eos and (out.tokens[0, n:] == 0).all()


def test_sharded_safetensors_with_index(pair, tmp_path):
    hf, ours = pair
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the checkpoint should be sharded"
    sharded = load_model(tmp_path, load_tokenizer=False)
    tokens = np.random.default_rng(0).integers(0, 61, size=(1, 12))
    a, _ = forward(ours.graphdef, ours.state, tokens)
    b, _ = forward(sharded.graphdef, sharded.state, tokens)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_load_is_close_to_float32(pair, tmp_path):
    import jax
    import jax.numpy as jnp

    hf, ours = pair
    hf.save_pretrained(tmp_path, safe_serialization=True)
    bf16 = load_model(tmp_path, dtype="bfloat16", load_tokenizer=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16.state))
    tokens = np.random.default_rng(0).integers(0, 61, size=(2, 40))
    a, _ = forward(ours.graphdef, ours.state, tokens)
    b, _ = forward(bf16.graphdef, bf16.state, tokens)
    assert b.dtype == jnp.float32
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1
    with pytest.raises(ValueError, match="dtype='float16' is not supported"):
        load_model(tmp_path, dtype="float16")
