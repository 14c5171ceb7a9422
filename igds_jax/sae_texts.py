"""Documents for SAE training and evaluation: the demo corpus, text files or records.

``prepare_texts`` reads ``docs + eval.docs`` documents, puts BOS in front where the tokenizer
leaves it out, and sets ``eval.docs`` of them aside with the seed, so ``igds sae eval`` with
the same settings scores the same held-out documents that training never saw.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from igds_jax.sae_pipeline import SAEPipelineConfig

logger = logging.getLogger(__name__)


def with_bos(tokenizer, texts: Sequence[str], bos_token_id: int | None) -> list[str]:
    """Prefix each text with the BOS token string when the tokenizer does not add it.

    The first position of a sequence is an attention sink whose activations are outliers
    (norm ~100x the rest in SmolLM2). With a BOS in front, that position is the BOS token,
    which the activation stream drops; without it the first word would take its place.
    Texts that already start with BOS (for example chat-formatted ones) are left alone.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if bos_token_id is None or not bos:
        return list(texts)
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out.append(text if ids and ids[0] == bos_token_id else bos + text)
    return out


def read_texts(spec: str, count: int | None, seed: int, tokenizer, record_format: str) -> list[str]:
    """Read ``count`` documents from ``spec``, which is "demo", a ``.txt`` file (one document
    per non-blank line) or a records file or saved dataset (``train.record_files.load_records``)."""
    if spec == "demo":
        from igds_jax.demo_data import sae_training_texts

        return list(sae_training_texts(count, seed))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"texts {spec!r} is neither 'demo' nor an existing file or dir")
    if path.suffix.lower() == ".txt":
        with open(path, encoding="utf-8") as f:
            lines = (line.strip() for line in f)
            return list(itertools.islice((x for x in lines if x), count))
    from train.record_files import load_records

    records, _ = load_records(path)
    use_chat = record_format == "chat" and getattr(tokenizer, "chat_template", None)
    docs = []
    for record in records[:count]:
        if use_chat:
            turns = [
                {"role": "user", "content": record.prompt},
                {"role": "assistant", "content": record.response},
            ]
            docs.append(tokenizer.apply_chat_template(turns, tokenize=False))
        else:
            docs.append(f"{record.prompt}\n{record.response}")
    return docs


def split_heldout(texts: list[str], n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Return (train, held-out): ``n_heldout`` documents drawn with ``seed``, the rest."""
    if n_heldout >= len(texts):
        raise ValueError(
            f"{len(texts)} documents cannot hold out eval.docs={n_heldout}; add documents or "
            "lower eval.docs"
        )
    perm = np.random.default_rng(seed).permutation(len(texts))
    heldout = set(perm[:n_heldout].tolist())
    train = [t for i, t in enumerate(texts) if i not in heldout]
    return train, [texts[i] for i in sorted(heldout)]


def prepare_texts(cfg: SAEPipelineConfig, tokenizer, bos_token_id) -> tuple[list[str], list[str]]:
    """Return (train, held-out) documents, with BOS put in front when configured."""
    count = None if cfg.docs is None else cfg.docs + cfg.eval.docs
    texts = read_texts(cfg.texts, count, cfg.seed, tokenizer, cfg.record_format)
    if cfg.activations.prepend_bos:
        texts = with_bos(tokenizer, texts, bos_token_id)
    return split_heldout(texts, cfg.eval.docs, cfg.seed)
