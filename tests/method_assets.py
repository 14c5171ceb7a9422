"""Test helpers for the method tests, on top of the planted example in igds_jax.tiny_method."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igds_jax.tiny_method import (  # noqa: F401 - re-exported for the tests
    APPLE,
    BOS,
    D_MODEL,
    D_SAE,
    EOS,
    FIVE,
    HOOK,
    PEAR,
    THE,
    VOCAB,
    YES_DOWN,
    YES_UP,
    llama_weights,
    planted_sae,
    pool_rows,
    reference_rows,
    task_rows,
    write_all,
    write_jsonl,
    write_model,
    write_sae,
)


def load_tiny_model(directory: Path):
    """Write the tiny checkpoint to ``directory`` and load it with ``models.load_model``."""
    from models.loading import load_model

    return load_model(write_model(directory))


def encode_rows(tokenizer, rows: list[dict], max_tokens: int = 64, **split_kwargs):
    """Encode rows with the plain-text template (prompt, newline, response, optional EOS)."""
    from train.records import Record
    from train.tokenize import encode_records

    records = [Record(r["id"], r["prompt"], r["response"]) for r in rows]
    examples, _ = encode_records(tokenizer, records, max_tokens=max_tokens, **split_kwargs)
    return examples


def run_single(model, ids: np.ndarray, hook: str = HOOK, intervention=None, length: int = 32):
    """Forward one unpadded sequence, right-padded to ``length`` so every call shares one
    compiled shape; return ``(logits [T, V], activation at hook [T, d_model])`` in float64."""
    from models.transformer import forward

    n = len(ids)
    assert n <= length, f"sequence of {n} tokens; raise length"
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :n] = ids
    mask = (np.arange(length) < n).astype(np.int32)[None]
    interventions = {hook: intervention} if intervention is not None else None
    logits, captured = forward(
        model.graphdef, model.state, tokens, mask, capture=[hook], interventions=interventions
    )
    return (
        np.asarray(logits[0, :n], np.float64),
        np.asarray(captured[hook][0, :n], np.float64),
    )


def captured_hook(model, example, hook: str = HOOK) -> np.ndarray:
    """Activation ``[T, d_model]`` at ``hook`` for one example."""
    return run_single(model, example.input_ids, hook)[1]


def np_log_softmax(logits_tv: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float64."""
    x = np.asarray(logits_tv, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
