"""A tiny random Llama with its own tokenizer, and synthetic arithmetic records.

For smoke runs, tests and benchmarks that must work offline in seconds:
``python -m train.tiny runs/tiny`` writes ``runs/tiny/model`` (HF directory: config.json,
model.safetensors, tokenizer files with a ChatML chat template) and ``runs/tiny/{train,
eval,test}.jsonl`` with records such as ``{"prompt": "What is 3 + 4?", "response": "3 + 4
= 7\\n#### 7"}``, which ``configs/finetune_tiny.yaml`` trains on.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.loading import init_model
from train.export import export_hf
from train.params import flatten_state

logger = logging.getLogger(__name__)

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<pad>", "<s>", "<|im_start|>", "<|im_end|>")


def arithmetic_records(n: int, seed: int = 0, start_id: int = 0) -> list[dict[str, str]]:
    """``n`` addition and subtraction problems with GSM8K-style ``#### N`` answers."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(0, 50, size=2))
        op = "+" if rng.random() < 0.5 else "-"
        c = a + b if op == "+" else a - b
        rows.append(
            {
                "id": f"q{start_id + i}",
                "prompt": f"What is {a} {op} {b}?",
                "response": f"{a} {op} {b} = {c}\n#### {c}",
            }
        )
    return rows


def train_tokenizer(texts: Sequence[str], vocab_size: int = 256) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` and give it a ChatML template.

    BOS is ``<s>``; EOS and end of turn are both ``<|im_end|>``, so generation stops at
    the end of the assistant turn.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    hf.chat_template = CHATML
    return hf


def tiny_llama_config(vocab_size: int, tokenizer: Any = None, **overrides: Any) -> ModelConfig:
    """Return the config of a 2-layer Llama (d_model 64, 4 heads, 2 KV heads) for tests."""
    fields: dict[str, Any] = {
        "family": "llama",
        "vocab_size": vocab_size,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "head_dim": 16,
        "d_ff": 128,
        "norm_eps": 1e-5,
        "tie_embeddings": True,
        "max_positions": 512,
    }
    if tokenizer is not None:
        fields.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=(tokenizer.eos_token_id,),
            pad_token_id=tokenizer.pad_token_id,
        )
    fields.update(overrides)
    return ModelConfig(**fields)


def write_tiny_model(
    out_dir: str | Path, texts: Sequence[str], *, seed: int = 0, **overrides: Any
) -> Path:
    """Write a random tiny Llama with a tokenizer trained on ``texts`` as an HF directory."""
    tokenizer = train_tokenizer(texts)
    cfg = tiny_llama_config(len(tokenizer), tokenizer, **overrides)
    _, state = init_model(cfg, seed=seed)
    return export_hf(out_dir, flatten_state(state), cfg, tokenizer=tokenizer)


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_tiny_run(root: str | Path, *, n_train: int = 256, seed: int = 0) -> Path:
    """Write ``root/model`` and ``root/{train,eval,test}.jsonl``."""
    root = Path(root)
    train = arithmetic_records(n_train, seed=seed)
    held = arithmetic_records(32, seed=seed + 1, start_id=n_train)
    test = arithmetic_records(32, seed=seed + 2, start_id=n_train + 32)
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "eval.jsonl", held)
    write_jsonl(root / "test.jsonl", test)
    texts = [r["prompt"] + " " + r["response"] for r in train] + ["user assistant system"]
    write_tiny_model(root / "model", texts, seed=seed)
    logger.info("wrote a tiny model and %d training records to %s", n_train, root)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output directory (model/ and *.jsonl are written there)")
    parser.add_argument("--n-train", type=int, default=256, help="training records (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="data and weight seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_tiny_run(args.root, n_train=args.n_train, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
