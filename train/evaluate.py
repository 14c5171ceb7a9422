"""Evaluation: greedy answers scored against references, and held-out response loss.

- Generation: prompts (the training encoding's prompt part, chat template included) are
  sorted by length and answered in batches of ``batch_size`` with ``models.generate``
  (greedy, stopping at the model's and tokenizer's EOS ids). Each batch is padded to a
  multiple of 32 prompt tokens and to ``batch_size`` rows, so few shapes compile.
- Metrics (``train.metrics``): ``math`` gives ``math_accuracy`` (exact match of the final
  number), ``rouge`` gives ``rouge1``/``rouge2``/``rougeL``, ``bleu`` and ``chrf`` their
  corpus scores.
- Loss: the mean next-token cross-entropy over every response token of the held-out set
  (token-weighted, so long responses count more), the same loss the training minimises.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from models.config import ModelConfig
from models.generate import generate
from train import metrics as metric_fns
from train.batching import eval_batches
from train.config import FinetuneConfig
from train.data import encode, encode_prompts, pad_id, read_records
from train.records import Record
from train.sft import response_loss_sum

logger = logging.getLogger(__name__)

PROMPT_LENGTH_MULTIPLE = 32

_loss_sums = jax.jit(response_loss_sum, static_argnums=0)


def heldout_loss(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    examples: Sequence[Any],
    *,
    tokens_per_batch: int = 4096,
    bucket_multiple: int = 64,
    pad_token_id: int = 0,
) -> float:
    """Mean response-token loss of ``examples`` (``EncodedExample``) under the model."""
    total, count = 0.0, 0.0
    for batch in eval_batches(
        examples,
        tokens_per_batch=tokens_per_batch,
        bucket_multiple=bucket_multiple,
        pad_id=pad_token_id,
    ):
        loss_sum, n = _loss_sums(graphdef, state, batch)
        total += float(loss_sum)
        count += float(n)
    if count == 0:
        raise ValueError("the held-out set has no response tokens to score")
    return total / count


def stop_ids(model_config: ModelConfig, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids of the model config and the tokenizer together."""
    ids = set(model_config.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def generate_answers(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_token_ids: tuple[int, ...],
    pad_token_id: int,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts`` (token ids), decoded without special tokens."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    answers: list[str] = [""] * len(prompts)
    n_batches = math.ceil(len(order) / batch_size)
    for b in tqdm(range(n_batches), desc="generate", disable=not progress, leave=False):
        chunk = order[b * batch_size : (b + 1) * batch_size]
        longest = max(len(prompts[i]) for i in chunk)
        width = math.ceil(longest / PROMPT_LENGTH_MULTIPLE) * PROMPT_LENGTH_MULTIPLE
        tokens = np.full((batch_size, width), pad_token_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for row, i in enumerate(chunk):
            ids = prompts[i]
            tokens[row, width - len(ids) :], mask[row, width - len(ids) :] = ids, 1
        # rows past the chunk get one token so every row has a real position.
        mask[len(chunk) :, -1] = 1
        out = generate(
            graphdef,
            state,
            tokens,
            mask,
            max_new_tokens=max_new_tokens,
            eos_token_ids=eos_token_ids,
            pad_token_id=pad_token_id,
        )
        for row, i in enumerate(chunk):
            ids = out.tokens[row, : out.lengths[row]]
            answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return answers


def score(
    predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str]
) -> dict[str, float]:
    """Compute the named metrics (``math``, ``rouge``, ``bleu``, ``chrf``)."""
    out: dict[str, float] = {}
    for name in metrics:
        if name == "math":
            out["math_accuracy"] = metric_fns.math_accuracy(predictions, references)
        elif name == "rouge":
            out.update(metric_fns.rouge(predictions, references))
        elif name == "bleu":
            out["bleu"] = metric_fns.bleu(predictions, references)
        elif name == "chrf":
            out["chrf"] = metric_fns.chrf(predictions, references)
        else:
            raise ValueError(f"metric {name!r} is unknown; use math, rouge, bleu or chrf")
    return out


def evaluate_model(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokenizer: Any,
    model_config: ModelConfig,
    cfg: FinetuneConfig,
    out_dir: str | Path | None = None,
    *,
    test_records: Sequence[Record] | None = None,
    eval_records: Sequence[Record] | None = None,
) -> dict[str, float]:
    """Score the model on ``cfg.data.test`` (generation) and ``cfg.data.eval`` (loss).

    Records may be passed in directly instead of read from the config paths. With
    ``out_dir``, writes ``predictions.jsonl`` and ``eval.json`` there.
    """
    if tokenizer is None:
        raise ValueError("evaluation needs a tokenizer; load a model directory that has one")
    data, ev = cfg.data, cfg.eval
    pad = pad_id(tokenizer, model_config.pad_token_id)
    results: dict[str, float] = {}
    rows: list[dict[str, Any]] = []

    if test_records is None and data.test:
        test_records = read_records(data.test, data, ev.max_examples)
    if test_records:
        start = time.perf_counter()
        prompts = encode_prompts(tokenizer, test_records, data, ev.max_prompt_tokens)
        answers = generate_answers(
            graphdef,
            state,
            tokenizer,
            prompts,
            max_new_tokens=ev.max_new_tokens,
            batch_size=ev.batch_size,
            eos_token_ids=stop_ids(model_config, tokenizer),
            pad_token_id=pad,
            progress=cfg.loop.progress,
        )
        references = [r.response for r in test_records]
        results.update(score(answers, references, ev.metrics))
        results["num_test"] = len(test_records)
        results["generate_s"] = time.perf_counter() - start
        rows = [
            {"id": r.id, "prompt": r.prompt, "reference": r.response, "prediction": a}
            for r, a in zip(test_records, answers, strict=True)
        ]

    if eval_records is None and data.eval:
        eval_records = read_records(data.eval, data)
    if eval_records:
        examples = encode(tokenizer, eval_records, data)
        results["eval_loss"] = heldout_loss(
            graphdef,
            state,
            examples,
            tokens_per_batch=data.tokens_per_batch,
            bucket_multiple=data.bucket_multiple,
            pad_token_id=pad,
        )
        results["num_eval"] = len(eval_records)

    if not results:
        raise ValueError("nothing to evaluate: set data.test and/or data.eval")
    logger.info("evaluation: %s", _format(results))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    return results


def _format(results: dict[str, float]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
    )
