"""A tiny, fully planted IGDS example: word-level tokenizer, Llama checkpoint, SAE and data.

``python -m igds_jax.tiny_method DIR`` writes everything ``configs/method_tiny.yaml`` reads,
in seconds and without downloads; the method tests build their inputs from the same
functions. Nothing here is trained: the weights are chosen so that the right answer is
known.

The checkpoint is written in HF format with chosen weights:
embeddings have standard deviation 1 and the block projections are small, so the residual
stays close to the token embedding, and a residual pushed along the unembedding row
``U[word]`` makes the model predict ``word``.

Planted SAE at ``blocks.0.hook_resid_pre`` (the token embeddings), JumpReLU:

- ``YES_UP`` fires (activation ~1) on the token "yes"; its decoder row is ``+U[yes]`` scaled
  up, so amplifying it makes the model predict "yes" next (lower loss on "yes yes ...").
- ``YES_DOWN`` fires on "yes" too, but its decoder row is ``-U[yes]``: amplifying it raises
  the loss on the same responses.
- ``APPLE`` and ``PEAR`` fire on "apple" / "pear", words of the task prompts.
- ``THE`` fires on "the", a word common to the task and the reference corpus.
- ``FIVE`` never fires, but its decoder row is ``+U[5]``: steering along it makes the
  model answer "5".
- every other feature has a random direction and a threshold it almost never reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from sae import SAEConfig, params_from_arrays, save_saelens

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "yes no maybe apple pear plum the a cat dog sat on mat is what how many why "
    "question answer fruit say red blue green one two three four five six seven eight nine "
    "ten plus equals #### please tell me 0 1 2 3 4 5 6 7 8 9"
).split()
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
PAD, BOS, EOS = 0, 1, 2
D_MODEL, D_FF, N_LAYERS = 32, 64, 2
N_HEADS, N_KV_HEADS = 4, 2
D_SAE = 16
HOOK = "blocks.0.hook_resid_pre"
YES_UP, YES_DOWN, APPLE, PEAR, THE, FIVE = 0, 1, 2, 3, 4, 5


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over VOCAB that prepends <s>."""
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def llama_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named Llama weights with unit-variance embeddings and small projections."""
    rng = np.random.default_rng(seed)
    d, f = D_MODEL, D_FF
    head_dim = d // N_HEADS
    kv = N_KV_HEADS * head_dim

    def normal(shape, std):
        return (rng.normal(size=shape) * std).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": normal((len(VOCAB), d), 1.0),
        "model.norm.weight": np.ones((d,), np.float32),
        "lm_head.weight": normal((len(VOCAB), d), 0.3),
    }
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones((d,), np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones((d,), np.float32)
        tensors[p + "self_attn.q_proj.weight"] = normal((d, d), 0.1)
        tensors[p + "self_attn.k_proj.weight"] = normal((kv, d), 0.1)
        tensors[p + "self_attn.v_proj.weight"] = normal((kv, d), 0.1)
        tensors[p + "self_attn.o_proj.weight"] = normal((d, d), 0.1)
        tensors[p + "mlp.gate_proj.weight"] = normal((f, d), 0.1)
        tensors[p + "mlp.up_proj.weight"] = normal((f, d), 0.1)
        tensors[p + "mlp.down_proj.weight"] = normal((d, f), 0.1)
    return tensors


def write_model(directory: Path, seed: int = 0) -> Path:
    """Write a tiny HF Llama checkpoint with its tokenizer to ``directory``."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "vocab_size": len(VOCAB),
        "hidden_size": D_MODEL,
        "intermediate_size": D_FF,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV_HEADS,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    }
    (directory / "config.json").write_text(json.dumps(config))
    save_file(llama_weights(seed), str(directory / "model.safetensors"))
    make_tokenizer().save_pretrained(str(directory))
    return directory


def planted_sae_arrays(
    weights: dict[str, np.ndarray], seed: int = 1, decoder_scale: float = 8.0
) -> dict[str, np.ndarray]:
    """SAE weights with the planted features listed in the module docstring."""
    embed_vd = weights["model.embed_tokens.weight"]
    head_vd = weights["lm_head.weight"]
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(size=(D_MODEL, D_SAE)).astype(np.float32) / np.sqrt(D_MODEL)
    w_dec = rng.normal(size=(D_SAE, D_MODEL)).astype(np.float32) / np.sqrt(D_MODEL)
    threshold = np.full((D_SAE,), 50.0, np.float32)  # random features: (almost) never fire

    def detector(feature: int, word: str) -> None:
        e = embed_vd[VOCAB[word]]
        w_enc[:, feature] = e / float(e @ e)  # projection is 1 on the word itself
        threshold[feature] = 0.5

    for feature, word in ((YES_UP, "yes"), (YES_DOWN, "yes"), (APPLE, "apple"), (PEAR, "pear")):
        detector(feature, word)
    detector(THE, "the")
    u_yes = head_vd[VOCAB["yes"]] / np.linalg.norm(head_vd[VOCAB["yes"]])
    w_dec[YES_UP] = decoder_scale * u_yes
    w_dec[YES_DOWN] = -decoder_scale * u_yes
    u_five = head_vd[VOCAB["5"]] / np.linalg.norm(head_vd[VOCAB["5"]])
    w_dec[FIVE] = decoder_scale * u_five
    return {
        "W_enc": w_enc,
        "b_enc": np.zeros((D_SAE,), np.float32),
        "W_dec": w_dec,
        "b_dec": np.zeros((D_MODEL,), np.float32),
        "threshold": threshold,
    }


def sae_config(hook_name: str = HOOK) -> SAEConfig:
    return SAEConfig(
        architecture="jumprelu",
        d_in=D_MODEL,
        d_sae=D_SAE,
        hook_name=hook_name,
        apply_b_dec_to_input=False,
    )


def planted_sae(seed: int = 0):
    """Return ``(arrays, params, cfg)`` of the planted SAE for the model of ``seed``."""
    arrays = planted_sae_arrays(llama_weights(seed))
    cfg = sae_config()
    return arrays, params_from_arrays(arrays, cfg, "planted"), cfg


def write_sae(directory: Path, seed: int = 0) -> Path:
    """Save the planted SAE of the model of ``seed`` in SAELens format."""
    _, params, cfg = planted_sae(seed)
    return save_saelens(params, cfg, directory)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task_rows(n: int, prefix: str = "t") -> list[dict]:
    """Task examples: questions about fruit answered with runs of "yes"."""
    fruits = ["apple", "pear", "apple pear", "pear apple apple"]
    rows = []
    for i in range(n):
        words = " ".join(["yes"] * (3 + i % 4))
        prompt = f"is the {fruits[i % len(fruits)]} red"
        rows.append({"id": f"{prefix}{i}", "prompt": prompt, "response": words})
    return rows


def reference_rows(n: int) -> list[dict]:
    """Reference corpus: "the" is common, task words are absent."""
    return [
        {"id": f"r{i}", "prompt": "the cat sat on the mat", "response": "the dog " * (1 + i % 3)}
        for i in range(n)
    ]


def pool_rows(n: int) -> list[dict]:
    """Pool: every third example looks like the task, the others do not."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append(
                {"id": f"p{i}", "prompt": "is the apple red", "response": "yes " * (2 + i % 5)}
            )
        else:
            rows.append(
                {
                    "id": f"p{i}",
                    "prompt": "what is one plus two",
                    "response": "three " * (1 + i % 4),
                }
            )
    return rows


def malformed_rows() -> list[str]:
    """Pool lines that the loader skips: invalid JSON, a missing and an empty field."""
    return [
        '{"id": "bad-json", "prompt": "is the',
        json.dumps({"id": "no-response", "prompt": "is the apple red"}),
        json.dumps({"id": "empty", "prompt": "   ", "response": "yes"}),
    ]


def write_all(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Write the model, the SAE and every dataset of the tiny example under ``directory``.

    The pool file ends with three malformed rows, which a run skips and counts by reason.
    """
    directory = Path(directory)
    paths = {
        "model": write_model(directory / "model", seed),
        "sae": write_sae(directory / "sae", seed),
        "task": write_jsonl(directory / "task.jsonl", task_rows(24)),
        "other_task": write_jsonl(directory / "other_task.jsonl", task_rows(16, prefix="o")),
        "reference": write_jsonl(directory / "reference.jsonl", reference_rows(12)),
        "pool": write_jsonl(directory / "pool.jsonl", pool_rows(30)),
    }
    with open(paths["pool"], "a", encoding="utf-8") as fh:
        fh.write("\n".join(malformed_rows()) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write the tiny IGDS example's inputs.")
    parser.add_argument("directory", help="output directory, e.g. runs/method_tiny/assets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    for name, path in write_all(Path(args.directory), args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
