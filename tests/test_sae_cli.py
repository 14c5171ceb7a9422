"""``igds sae train`` / ``igds sae eval`` end to end on a tiny random Llama saved to disk.

Reference values come from transformers (torch hidden states and losses) and NumPy SAE
formulas applied to the saved SAELens weights, never from the pipeline's own code.
"""

import json

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from igds_jax import cli  # noqa: E402
from igds_jax.sae_texts import split_heldout, with_bos  # noqa: E402
from sae.config import SAEConfig  # noqa: E402
from sae.formats import load_saelens, save_saelens  # noqa: E402
from sae.params import params_from_arrays  # noqa: E402

WORDS = "the a cat dog sat on mat ran to home one two three plus equals is big red".split()
HOOK = "blocks.1.hook_resid_post"
N_DOCS, N_EVAL = 40, 8


def word_tokenizer(add_bos: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("sae_cli")
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
    model_dir = root / "model"
    hf.save_pretrained(model_dir, safe_serialization=True)
    word_tokenizer().save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 14))) for _ in range(N_DOCS + N_EVAL)]
    texts = root / "texts.txt"
    texts.write_text("\n".join(lines) + "\n")
    return hf, model_dir, texts, lines, root


def write_config(setup, name: str, cache: bool = False, **train) -> str:
    _, model_dir, texts, _, root = setup
    run = root / name
    cfg = {
        "model": str(model_dir),
        "texts": str(texts),
        "docs": N_DOCS,
        "seed": 3,
        "activations": {
            "hook_name": HOOK,
            "context_size": 32,
            "batch_size": 4,
            "epochs": 3,
            "cache_dir": str(run / "acts") if cache else None,
        },
        "eval": {"docs": N_EVAL, "spliced_docs": 5, "batch_size": 4},
        "train": {
            "d_sae": 64,
            "k": 4,
            "lr": 3e-3,
            "warmup_steps": 2,
            "steps": 16,
            "batch_size": 32,
            "shuffle_buffer_tokens": 96,
            "dead_feature_window": 8,
            "log_every": 2,
            "checkpoint_every": 4,
            "checkpoint_dir": str(run / "ckpt"),
            "output_dir": str(run / "sae"),
        }
        | train,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(setup):
    config = write_config(setup, "full", cache=True)
    assert cli.main(["--log-level", "WARNING", "sae", "train", config, "--no-progress"]) == 0
    sae_dir = setup[4] / "full" / "sae"
    return sae_dir, json.loads((sae_dir / "metrics.json").read_text())


def reference_metrics(hf, texts, params, cfg):
    """L0, FVU, dead fraction (NumPy) and the spliced loss (torch hook) on ``texts``."""
    tok = word_tokenizer()
    layer = int(HOOK.split(".")[1])
    w_enc, b_enc = np.asarray(params.W_enc, np.float64), np.asarray(params.b_enc, np.float64)
    w_dec, b_dec = np.asarray(params.W_dec, np.float64), np.asarray(params.b_dec, np.float64)

    def encode(x):
        pre = (x - b_dec) @ w_enc + b_enc
        keep = np.argsort(-pre, axis=-1)[:, : cfg.k]
        f = np.zeros_like(pre)
        np.put_along_axis(f, keep, np.maximum(np.take_along_axis(pre, keep, -1), 0), -1)
        return f

    acts = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states[layer + 1][0]
        acts.append(hidden.numpy().astype(np.float64)[1:])
    x = np.concatenate(acts)
    f = encode(x)
    err = ((x - (f @ w_dec + b_dec)) ** 2).sum()
    fvu = err / ((x - x.mean(0)) ** 2).sum()

    def splice(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h_np = h[0].numpy().astype(np.float64)
        new = h_np.copy()
        new[1:] = encode(h_np[1:]) @ w_dec + b_dec  # BOS keeps its activation
        new_t = torch.tensor(new, dtype=h.dtype)[None]
        return (new_t, *out[1:]) if isinstance(out, tuple) else new_t

    def mean_loss(hook):
        handle = hf.model.layers[layer].register_forward_hook(hook) if hook else None
        total, count = 0.0, 0
        try:
            for text in texts[:5]:
                ids = torch.tensor([tok(text)["input_ids"]])
                with torch.no_grad():
                    logits = hf(ids).logits[0, :-1]
                loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                total, count = total + loss.item(), count + ids.shape[1] - 1
        finally:
            if handle is not None:
                handle.remove()
        return total / count

    return {
        "l0": (f > 0).sum(-1).mean(),
        "fvu": fvu,
        "dead_fraction": 1 - (f > 0).any(0).mean(),
        "tokens": len(x),
        "loss": mean_loss(None),
        "loss_spliced": mean_loss(splice),
    }


@pytest.mark.slow
def test_train_writes_sae_and_heldout_metrics(setup, trained):
    hf, _, _, lines, _ = setup
    sae_dir, metrics = trained
    params, cfg = load_saelens(sae_dir)
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k) == ("topk", 32, 64, 4)
    assert cfg.hook_name == HOOK
    assert cfg.normalize_activations == "none"
    assert metrics["steps"] == 16
    assert metrics["tokens"] == 16 * 32
    assert not metrics["stopped_early"]
    # three epochs over the cached activations ran the model on the first epoch only
    source = metrics["source"]
    assert (
        source["tokens_per_epoch"] == sum(len(t.split()) for t in lines) - metrics["eval"]["tokens"]
    )
    assert source["forward_tokens_this_run"] == source["tokens_per_epoch"]
    _, heldout = split_heldout(lines, N_EVAL, seed=3)
    ref = reference_metrics(hf, heldout, params, cfg)
    got = metrics["eval"]
    assert got["tokens"] == ref["tokens"] == sum(len(t.split()) for t in heldout)
    for key in ("l0", "fvu", "dead_fraction"):
        assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert got["spliced"]["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert got["spliced"]["loss_spliced"] == pytest.approx(ref["loss_spliced"], rel=1e-4)
    assert abs(ref["loss_spliced"] - ref["loss"]) > 1e-4, "the splice must change the loss"
    assert 0 < got["fvu"] < 1, "16 steps should already explain some variance"


@pytest.mark.slow
def test_eval_reuses_training_split(setup, trained, tmp_path):
    sae_dir, metrics = trained
    out = tmp_path / "eval.json"
    argv = ["--log-level", "WARNING", "sae", "eval", "--sae", str(sae_dir), "--out", str(out)]
    assert cli.main([*argv, "--no-progress"]) == 0
    report = json.loads(out.read_text())
    for key in ("l0", "fvu", "dead_fraction", "tokens"):
        assert report["eval"][key] == pytest.approx(metrics["eval"][key], rel=1e-6)
    assert report["eval"]["spliced"]["loss_increase"] == pytest.approx(
        metrics["eval"]["spliced"]["loss_increase"], rel=1e-5
    )


@pytest.mark.slow
def test_interrupted_run_resumes_identically(setup, trained, monkeypatch):
    from igds_jax.sae_activations import ActivationSource

    config = write_config(setup, "resumed")
    real_batch = ActivationSource.batch
    calls = []

    def interrupt_late(self, index):
        calls.append(index)
        if len(calls) == 9:  # past the first checkpoints, well before the last step
            raise KeyboardInterrupt
        return real_batch(self, index)

    monkeypatch.setattr(ActivationSource, "batch", interrupt_late)
    argv = ["--log-level", "WARNING", "sae", "train", config, "--no-progress"]
    assert cli.main(argv) == 130
    sae_dir = setup[4] / "resumed" / "sae"
    assert not (sae_dir / "cfg.json").exists()
    assert any(p.name.isdigit() for p in (setup[4] / "resumed" / "ckpt").iterdir())
    monkeypatch.setattr(ActivationSource, "batch", real_batch)

    assert cli.main(argv) == 0
    metrics = json.loads((sae_dir / "metrics.json").read_text())
    full_dir, full_metrics = trained
    # the resumed run skipped the batches the checkpoint had consumed without the model
    assert 0 < metrics["source"]["forward_tokens_this_run"]
    source = metrics["source"]
    assert source["forward_tokens_this_run"] < 3 * source["tokens_per_epoch"] - 100
    assert len(metrics["history"]) == len(full_metrics["history"])
    for mine, full in zip(metrics["history"], full_metrics["history"], strict=True):
        assert mine == pytest.approx(full, rel=1e-5)
    got, _ = load_saelens(sae_dir)
    want, _ = load_saelens(full_dir)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-6)


def test_width_mismatch_fails_before_forward(setup, tmp_path, monkeypatch, capsys):
    import igds_jax.activations as activations

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran before the width check")

    monkeypatch.setattr(activations, "forward", no_forward)
    rng = np.random.default_rng(0)
    cfg = SAEConfig("topk", d_in=48, d_sae=16, k=2, hook_name=HOOK)
    arrays = {
        "W_enc": rng.standard_normal((48, 16)).astype(np.float32),
        "b_enc": np.zeros(16, np.float32),
        "W_dec": rng.standard_normal((16, 48)).astype(np.float32),
        "b_dec": np.zeros(48, np.float32),
    }
    params = params_from_arrays(arrays, cfg, "test")
    save_saelens(params, cfg, tmp_path / "wide")
    _, model_dir, texts, _, _ = setup
    argv = ["sae", "eval", "--sae", str(tmp_path / "wide"), "--model", str(model_dir)]
    assert cli.main([*argv, "--texts", str(texts), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "d_in=48" in err
    assert "d_model=32" in err

    config = write_config(setup, "bad_width", d_in=48)
    assert cli.main(["sae", "train", config, "--no-progress"]) == 2
    assert "d_in=48" in capsys.readouterr().err

    config = write_config(setup, "bad_hook")
    override = "activations.hook_name=blocks.7.hook_resid_post"
    assert cli.main(["sae", "train", config, "--set", override, "--no-progress"]) == 2
    assert "blocks.7" in capsys.readouterr().err


def test_cache_of_other_hook_is_rejected(setup, trained, capsys):
    config = write_config(setup, "full", cache=True)
    override = "activations.hook_name=blocks.0.hook_resid_post"
    assert cli.main(["sae", "train", config, "--set", override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "activation cache" in err
    assert "hook_name" in err


def test_with_bos_prefixes_missing_bos():
    plain = word_tokenizer(add_bos=False)
    texts = ["the cat sat", "<s> one plus two"]
    out = with_bos(plain, texts, bos_token_id=1)
    assert [plain(t)["input_ids"][0] for t in out] == [1, 1]
    assert plain(out[0])["input_ids"][1:] == plain("the cat sat")["input_ids"]
    assert out[1] == texts[1]
    assert with_bos(word_tokenizer(), texts, bos_token_id=1) == texts


def test_split_heldout_disjoint_and_seeded():
    texts = [f"doc {i}" for i in range(30)]
    train, heldout = split_heldout(texts, 7, seed=5)
    assert len(heldout) == 7
    assert len(train) == 23
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(texts)
    assert split_heldout(texts, 7, seed=5) == (train, heldout)
    assert split_heldout(texts, 7, seed=6)[1] != heldout
    with pytest.raises(ValueError, match="eval.docs=30"):
        split_heldout(texts, 30, seed=0)
