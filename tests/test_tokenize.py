"""Token ids, response masks, truncation and length bucketing on a tiny local tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from train.tokenize import (
    EncodedExample,
    TokenizeReport,
    bucket_lengths,
    encode_example,
    encode_records,
    encode_response_alone,
    pack_batches,
    truncate_split,
)

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Renders the assistant role as "bot" but the generation prompt as "assistant".
MISMATCHED = (
    "{% for m in messages %}<|im_start|>{{ 'bot' if m['role'] == 'assistant' else m['role'] }}"
    "\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
    "How many eggs does she sell? She sells 16 - 3 = 13 eggs. #### 13",
    "user assistant system bot. Translate to German: good morning. Guten Morgen.",
]
PROMPT = "Janet's ducks lay 16 eggs per day. How many does she sell?"
RESPONSE = "She sells 16 - 3 = 13 eggs.\n#### 13"


def make_tokenizer(chat_template: str | None, bos: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="<pad>",
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


@pytest.fixture(scope="module")
def chat_tok():
    return make_tokenizer(CHATML)


@pytest.fixture(scope="module")
def plain_tok():
    return make_tokenizer(None)


def plain_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chat_response_mask_exact(chat_tok):
    example = encode_example(chat_tok, PROMPT, RESPONSE, max_tokens=512)
    ids = example.input_ids.tolist()
    expected_prompt = (
        [chat_tok.bos_token_id]
        + plain_ids(chat_tok, "<|im_start|>user\n" + PROMPT + "<|im_end|>\n")
        + plain_ids(chat_tok, "<|im_start|>assistant\n")
    )
    expected_response = plain_ids(chat_tok, RESPONSE) + plain_ids(chat_tok, "<|im_end|>\n")

    assert ids == expected_prompt + expected_response
    assert example.num_prompt_tokens == len(expected_prompt)
    assert example.input_ids[example.response_mask].tolist() == expected_response
    assert not example.response_mask[: len(expected_prompt)].any()
    assert chat_tok.decode(example.input_ids[example.response_mask]) == RESPONSE + "<|im_end|>\n"
    assert example.token_mask.tolist() == [False] + [True] * (len(ids) - 1)
    assert example.input_ids.dtype == np.int32
    assert not example.truncated


def test_plain_response_mask_exact(plain_tok):
    example = encode_example(plain_tok, PROMPT, RESPONSE, max_tokens=512)
    prompt_part = [plain_tok.bos_token_id] + plain_ids(plain_tok, PROMPT + "\n")
    response_part = plain_ids(plain_tok, RESPONSE) + [plain_tok.eos_token_id]

    assert example.input_ids.tolist() == prompt_part + response_part
    assert example.input_ids[example.response_mask].tolist() == response_part
    assert example.response_mask.sum() == len(response_part)
    assert example.token_mask[0] == np.False_
    assert example.token_mask[1:].all()


def test_plain_without_bos_or_eos():
    tok = make_tokenizer(None, bos=False)
    example = encode_example(tok, PROMPT, RESPONSE, max_tokens=512, append_eos=False)
    assert example.input_ids.tolist() == plain_ids(tok, PROMPT + "\n") + plain_ids(tok, RESPONSE)
    assert example.token_mask.all()
    assert tok.decode(example.input_ids[example.response_mask]) == RESPONSE


def test_chat_template_forced_off(chat_tok, plain_tok):
    forced = encode_example(chat_tok, PROMPT, RESPONSE, max_tokens=512, use_chat_template=False)
    plain = encode_example(plain_tok, PROMPT, RESPONSE, max_tokens=512)
    assert forced.input_ids.tolist() == plain.input_ids.tolist()
    assert forced.response_mask.tolist() == plain.response_mask.tolist()


def test_system_prompt_in_prompt_part(chat_tok):
    example = encode_example(chat_tok, PROMPT, RESPONSE, max_tokens=512, system_prompt="Be brief.")
    prompt_text = chat_tok.decode(example.input_ids[~example.response_mask])
    assert prompt_text.startswith("<s><|im_start|>system\nBe brief.<|im_end|>\n")
    assert chat_tok.decode(example.input_ids[example.response_mask]) == RESPONSE + "<|im_end|>\n"


def test_prefix_mismatch_raises():
    tok = make_tokenizer(MISMATCHED)
    with pytest.raises(ValueError, match="not a token prefix") as info:
        encode_example(tok, PROMPT, RESPONSE, max_tokens=512)
    assert "use_chat_template=False" in str(info.value)


def test_missing_template_raises(plain_tok):
    with pytest.raises(ValueError, match="no chat_template"):
        encode_example(plain_tok, PROMPT, RESPONSE, max_tokens=512, use_chat_template=True)


@pytest.mark.parametrize(
    ("p", "r", "max_tokens", "kept_p", "kept_r"),
    [
        (40, 30, 32, 16, 16),  # both long: the prompt keeps max_tokens // 2
        (40, 5, 32, 27, 5),  # short response: the prompt gets the rest
        (6, 100, 32, 6, 26),  # short prompt: the response gets the rest
        (10, 10, 32, 10, 10),  # fits
        (3, 3, 2, 1, 1),  # tiny limit: BOS and one response token
    ],
)
def test_truncate_split_rule(p, r, max_tokens, kept_p, kept_r):
    bos = 1000
    prompt = [bos] + list(range(1, p))
    response = list(range(2000, 2000 + r))

    out_p, out_r = truncate_split(prompt, response, max_tokens, bos)

    assert len(out_p) == kept_p
    assert len(out_r) == kept_r
    assert out_p[0] == bos
    assert out_p[1:] == (prompt[p - (kept_p - 1) :] if kept_p > 1 else [])
    assert out_r == response[:kept_r]


def test_truncate_without_bos_keeps_tail():
    out_p, out_r = truncate_split(list(range(40)), list(range(100, 130)), 32, bos_token_id=None)
    assert out_p == list(range(24, 40))
    assert out_r == list(range(100, 116))


def test_encode_truncation_report(chat_tok):
    long_prompt = " ".join([PROMPT] * 6)
    long_response = " ".join([RESPONSE] * 6)
    full = encode_example(chat_tok, long_prompt, long_response, max_tokens=4096)
    report = TokenizeReport()
    cut = encode_example(chat_tok, long_prompt, long_response, max_tokens=64, report=report)

    full_prompt = full.input_ids[~full.response_mask].tolist()
    full_response = full.input_ids[full.response_mask].tolist()
    assert cut.length == 64
    assert cut.truncated
    assert cut.input_ids[cut.response_mask].tolist() == full_response[:32]
    assert cut.input_ids[~cut.response_mask].tolist() == full_prompt[:1] + full_prompt[-31:]
    assert report.num_examples == 1
    assert report.num_truncated == 1
    assert report.prompt_tokens_dropped == len(full_prompt) - 32
    assert report.response_tokens_dropped == len(full_response) - 32


def test_encode_records_counts(plain_tok):
    class Row:
        def __init__(self, prompt, response):
            self.prompt, self.response = prompt, response

    rows = [Row(PROMPT, RESPONSE), Row(PROMPT * 5, RESPONSE)]
    encoded, report = encode_records(plain_tok, rows, max_tokens=48)
    assert len(encoded) == 2
    assert report.num_examples == 2
    assert report.num_truncated == 1
    assert all(e.length <= 48 for e in encoded)


def test_response_alone_matches_conditioned(chat_tok):
    conditioned = encode_example(chat_tok, PROMPT, RESPONSE, max_tokens=512)
    alone = encode_response_alone(chat_tok, PROMPT, RESPONSE, max_tokens=512)
    response_ids = conditioned.input_ids[conditioned.response_mask].tolist()
    assert alone.input_ids.tolist() == [chat_tok.bos_token_id] + response_ids
    assert alone.input_ids[alone.response_mask].tolist() == response_ids


def _example(length: int, response: int) -> EncodedExample:
    ids = np.arange(1, length + 1, dtype=np.int32)
    mask = np.zeros(length, dtype=bool)
    mask[length - response :] = True
    token = np.ones(length, dtype=bool)
    token[0] = False
    return EncodedExample(ids, mask, token, length - response, False)


def test_bucket_lengths_schemes():
    assert bucket_lengths(300) == (64, 128, 192, 256, 300)
    assert bucket_lengths(256, scheme="pow2", multiple=16) == (16, 32, 64, 128, 256)
    assert bucket_lengths(64) == (64,)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pack_batches_shapes_and_content(side):
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 300, size=57)
    examples = [_example(int(n), int(rng.integers(1, n))) for n in lengths]

    batches = pack_batches(examples, tokens_per_batch=1024, max_len=300, padding_side=side)

    shapes = {b.tokens_bt.shape for b in batches}
    assert shapes <= {(16, 64), (8, 128), (5, 192), (4, 256), (3, 300)}
    seen = np.concatenate([b.example_idx_b[b.example_idx_b >= 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(examples)))
    for b in batches:
        length = b.tokens_bt.shape[1]
        for row, i in enumerate(b.example_idx_b):
            if i < 0:
                assert not b.attention_mask_bt[row].any()
                assert not b.response_mask_bt[row].any()
                continue
            e = examples[i]
            span = slice(0, e.length) if side == "right" else slice(length - e.length, length)
            assert b.tokens_bt[row, span].tolist() == e.input_ids.tolist()
            assert b.attention_mask_bt[row].sum() == e.length
            assert b.attention_mask_bt[row, span].all()
            assert b.response_mask_bt[row, span].tolist() == e.response_mask.tolist()
            assert b.token_mask_bt[row, span].tolist() == e.token_mask.tolist()
            assert b.positions_bt[row, span].tolist() == list(range(e.length))
            assert length == min(n for n in (64, 128, 192, 256, 300) if n >= e.length)


def test_pack_batches_is_deterministic():
    examples = [_example(n, 1) for n in (5, 70, 5, 130, 64, 65)]
    first = pack_batches(examples, tokens_per_batch=256, max_len=192)
    second = pack_batches(examples, tokens_per_batch=256, max_len=192)
    assert [b.example_idx_b.tolist() for b in first] == [b.example_idx_b.tolist() for b in second]
    assert [b.example_idx_b.tolist() for b in first] == [[0, 2, 4, -1], [5, 1], [3]]


def test_pack_batches_rejects_long_example():
    with pytest.raises(ValueError, match="over the largest bucket"):
        pack_batches([_example(100, 1)], tokens_per_batch=256, max_len=64)
