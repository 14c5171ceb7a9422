"""Activation streaming and the spliced-in loss, checked against transformers' hidden states."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from igds_jax.activations import spliced_loss, stream_activations  # noqa: E402
from tests import hf_reference as ref  # noqa: E402

WORDS = "the a cat dog sat on mat ran to home one two three plus equals is".split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = LlamaForCausalLM(config).eval()
    ours = ref.save_tiny(hf, tmp_path_factory.mktemp("llama"))
    ours.tokenizer = word_tokenizer()
    return hf, ours


TEXTS = [
    "the cat sat on the mat",
    "one plus two equals three",
    "dog ran home",
    "a cat ran to the dog",
]


def test_stream_matches_hf_hidden_states_without_bos(pair):
    hf, ours = pair
    chunks = list(stream_activations(ours, TEXTS, "blocks.1.hook_resid_post", batch_size=3))
    got = np.concatenate(chunks)
    expected = []
    for text in TEXTS:
        ids = ours.tokenizer(text)["input_ids"]
        assert ids[0] == 1
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        expected.append(hidden.numpy()[1:])  # BOS dropped
    expected = np.concatenate(expected)
    assert got.shape == expected.shape == (sum(len(t.split()) for t in TEXTS), 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_spliced_loss_identity_and_damage(pair):
    hf, ours = pair
    same = spliced_loss(ours, TEXTS, "blocks.1.hook_resid_post", lambda x, m: x)
    assert same["loss_increase"] == pytest.approx(0.0, abs=1e-6)

    # Reference losses from torch: plain, and with the same edit as a forward hook.
    def reference(edit):
        handle = None
        if edit is not None:
            handle = hf.model.layers[1].register_forward_hook(lambda mod, args, out: edit(out))
        total, count = 0.0, 0
        try:
            for text in TEXTS:
                ids = torch.tensor([ours.tokenizer(text)["input_ids"]])
                with torch.no_grad():
                    logits = hf(ids).logits[0, :-1]
                loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                total, count = total + loss.item(), count + ids.shape[1] - 1
        finally:
            if handle is not None:
                handle.remove()
        return total / count, count

    plain, count = reference(None)
    assert same["loss"] == pytest.approx(plain, rel=1e-5)
    assert same["tokens"] == count
    halved = spliced_loss(ours, TEXTS, "blocks.1.hook_resid_post", lambda x, m: x * 0.5)
    edited, _ = reference(lambda out: out * 0.5)
    assert halved["loss_spliced"] == pytest.approx(edited, rel=1e-5)
    assert abs(edited - plain) > 1e-4, "the edit must change the loss for the test to bite"
