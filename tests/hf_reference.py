"""Shared checks of a ported family against transformers (PyTorch, float32).

Each family's test builds a tiny random HF model, saves it as safetensors and calls these
helpers; every comparison is against the torch forward, never against our own code.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.loading import LoadedModel, load_model  # noqa: E402
from models.transformer import forward, forward_from  # noqa: E402

LOGIT_TOL = 1e-4


def save_tiny(hf_model, tmp_path) -> LoadedModel:
    """Save an HF model as safetensors and load it back through our loader."""
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    return load_model(tmp_path, load_tokenizer=False)


def hf_logits(
    hf_model,
    tokens_bt: np.ndarray,
    mask_bt: np.ndarray | None = None,
    output_hidden_states: bool = False,
):
    tokens = torch.as_tensor(tokens_bt, dtype=torch.long)
    kwargs = {}
    if mask_bt is not None:
        mask = torch.as_tensor(mask_bt, dtype=torch.long)
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = torch.clamp(mask.cumsum(-1) - 1, min=0)
    with torch.no_grad():
        out = hf_model(tokens, output_hidden_states=output_hidden_states, **kwargs)
    return out


def check_long_prompt(hf_model, ours: LoadedModel, *, seq_len: int = 320, seed: int = 0):
    """Max abs logit difference on one long prompt; hidden states per layer."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, ours.config.vocab_size, size=(1, seq_len))
    out = hf_logits(hf_model, tokens, output_hidden_states=True)
    n = ours.config.n_layers
    capture = [f"blocks.{i}.hook_resid_post" for i in range(n - 1)]
    logits, cap = forward(ours.graphdef, ours.state, tokens, capture=capture)
    diff = np.abs(np.asarray(logits) - out.logits.numpy()).max()
    assert diff <= LOGIT_TOL, f"max abs logit diff {diff:.3g} > {LOGIT_TOL}"
    for i in range(n - 1):
        ref = out.hidden_states[i + 1].numpy()
        got = np.asarray(cap[f"blocks.{i}.hook_resid_post"])
        scale = max(1.0, np.abs(ref).max())
        assert np.abs(got - ref).max() <= 1e-4 * scale, f"hook_resid_post of layer {i}"
    return tokens


def check_padded_batch(hf_model, ours: LoadedModel, *, side: str, seed: int = 1):
    """Padded batch of unequal lengths: valid positions match HF and the unpadded rows."""
    rng = np.random.default_rng(seed)
    lengths = [37, 20, 29]
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros_like(tokens)
    for r, n in enumerate(lengths):
        row = rng.integers(1, ours.config.vocab_size, size=n)
        sl = slice(t - n, t) if side == "left" else slice(0, n)
        tokens[r, sl], mask[r, sl] = row, 1
    ref = hf_logits(hf_model, tokens, mask).logits.numpy()
    logits, _ = forward(ours.graphdef, ours.state, tokens, mask)
    logits = np.asarray(logits)
    valid = mask.astype(bool)
    diff = np.abs(logits[valid] - ref[valid]).max()
    assert diff <= LOGIT_TOL, f"{side}-padded batch: max abs logit diff {diff:.3g}"
    # Each row equals the same sequence run alone.
    for r in range(len(lengths)):
        alone, _ = forward(ours.graphdef, ours.state, tokens[r : r + 1, valid[r]])
        d = np.abs(np.asarray(alone)[0] - logits[r][valid[r]]).max()
        assert d <= LOGIT_TOL, f"row {r} differs from its unpadded run by {d:.3g}"


def check_intervention(hf_model, ours: LoadedModel, *, layer: int, seed: int = 2):
    """Adding a vector at hook_resid_post equals a torch forward hook doing the same."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, ours.config.vocab_size, size=(2, 24))
    vec = rng.normal(size=(ours.config.d_model,)).astype(np.float32)
    block = hf_decoder_layers(hf_model)[layer]

    def torch_hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + torch.as_tensor(vec)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(torch_hook)
    try:
        ref = hf_logits(hf_model, tokens).logits.numpy()
    finally:
        handle.remove()
    plain = hf_logits(hf_model, tokens).logits.numpy()

    def add_vec(x_btd, mask_bt):
        return x_btd + vec

    logits, _ = forward(
        ours.graphdef,
        ours.state,
        tokens,
        interventions={f"blocks.{layer}.hook_resid_post": add_vec},
    )
    diff = np.abs(np.asarray(logits) - ref).max()
    assert diff <= LOGIT_TOL, f"intervention: max abs logit diff {diff:.3g}"
    assert np.abs(ref - plain).max() > 1e-3, "the added vector must change the logits"


def check_stop_at_layer(ours: LoadedModel, *, layer: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, ours.config.vocab_size, size=(2, 16))
    name = f"blocks.{layer}.hook_resid_post"
    _, full = forward(ours.graphdef, ours.state, tokens, capture=[name])
    logits, part = forward(
        ours.graphdef, ours.state, tokens, capture=[name], stop_at_layer=layer + 1
    )
    assert logits is None
    np.testing.assert_array_equal(np.asarray(part[name]), np.asarray(full[name]))


def check_forward_from(hf_model, ours: LoadedModel, *, layer: int, seed: int = 4):
    """Finishing from HF's residual entering block ``layer`` gives HF's logits (padded)."""
    rng = np.random.default_rng(seed)
    lengths = [23, 15]
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros_like(tokens)
    for r, n in enumerate(lengths):
        tokens[r, t - n :] = rng.integers(1, ours.config.vocab_size, size=n)
        mask[r, t - n :] = 1
    out = hf_logits(hf_model, tokens, mask, output_hidden_states=True)
    resid = out.hidden_states[layer].numpy()
    logits, _ = forward_from(ours.graphdef, ours.state, resid, layer, mask)
    valid = mask.astype(bool)
    diff = np.abs(np.asarray(logits)[valid] - out.logits.numpy()[valid]).max()
    assert diff <= LOGIT_TOL, f"forward_from layer {layer}: max abs logit diff {diff:.3g}"


def hf_decoder_layers(hf_model):
    base = hf_model.base_model
    for attr in ("layers", "h"):
        if hasattr(base, attr):
            return getattr(base, attr)
    if hasattr(base, "language_model"):
        return base.language_model.layers
    raise AttributeError(f"cannot find decoder layers in {type(hf_model).__name__}")


def check_greedy_generation(
    hf_model, ours: LoadedModel, *, max_new_tokens: int = 12, seed: int = 4
):
    """Token-for-token equality with transformers' greedy generate on a left-padded batch."""
    from models.generate import generate

    rng = np.random.default_rng(seed)
    lengths = [9, 5]
    t = max(lengths)
    tokens = np.zeros((2, t), np.int64)
    mask = np.zeros_like(tokens)
    for r, n in enumerate(lengths):
        tokens[r, t - n :] = rng.integers(1, ours.config.vocab_size, size=n)
        mask[r, t - n :] = 1
    eos = hf_model.generation_config.eos_token_id
    eos = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))
    with torch.no_grad():
        ref = hf_model.generate(
            torch.as_tensor(tokens),
            attention_mask=torch.as_tensor(mask),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=0,
        )[:, t:].numpy()
    out = generate(
        ours.graphdef,
        ours.state,
        tokens,
        mask,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos,
        pad_token_id=0,
    )
    got = np.asarray(out.tokens)
    np.testing.assert_array_equal(got[:, : ref.shape[1]], ref)
    assert (got[:, ref.shape[1] :] == 0).all(), "rows must be padded after every row ended"
