"""A resumable source of model activations for SAE training, with an optional disk cache.

Documents are tokenized once and grouped into forward-pass batches of similar length (so
little compute goes to padding and only a few shapes compile). The group order is fixed
by the seed, so source batch ``i`` is always the same tokens. ``ActivationSource`` is a
callable ``start -> iterator`` as ``sae.train.train_sae`` expects: on resume it starts at
group ``start`` without running the model on the groups before it.

With a cache directory each group's activations are written once as ``.npy`` and read back
on later epochs and on resume. A ``cache.json`` file records what the cache was built
from, so a cache of another model, hook or text set is refused instead of reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from igds_jax.activations import stream_activations
from models.loading import LoadedModel

logger = logging.getLogger(__name__)


def real_token_counts(tokenizer, texts: Sequence[str], seq_len: int, bos_token_id) -> list[int]:
    """Count the activations each text yields: its tokens after truncation to ``seq_len``
    minus a leading BOS. Texts of fewer than two tokens count 0, because the activation
    stream skips them."""
    counts = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
        if len(ids) < 2:
            counts.append(0)
        else:
            counts.append(len(ids) - int(ids[0] == bos_token_id))
    return counts


def group_documents(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Split document indices into batches of ``batch_size`` similar-length documents.

    Documents are sorted by length (ties by index), cut into consecutive groups, and the
    groups are shuffled with ``seed``, so each group pads to nearly its own length.
    """
    if batch_size <= 0:
        raise ValueError(f"activations.batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    perm = np.random.default_rng(seed).permutation(len(groups))
    return [sorted(groups[g]) for g in perm]


def fingerprint(texts: Sequence[str], **settings) -> str:
    """Hash (SHA-256) the texts and the settings that determine the activations."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for text in texts:
        h.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


class ActivationSource:
    """Callable ``start -> iterator`` over ``[n_tokens, d_model]`` float32 activations.

    ``texts`` should already carry their BOS (``igds_jax.sae_texts.with_bos``). Batch
    ``i`` (counting across epochs) is group ``i % n_groups``. Documents that yield no activation are
    dropped up front, so every group yields exactly one batch.
    """

    def __init__(
        self,
        model: LoadedModel,
        texts: Sequence[str],
        hook_name: str,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        cache_dir: str | os.PathLike | None = None,
    ):
        if epochs < 1:
            raise ValueError(f"activations.epochs must be at least 1, got {epochs}")
        self.model, self.hook_name, self.seq_len, self.epochs = model, hook_name, seq_len, epochs
        bos = model.config.bos_token_id
        lengths = real_token_counts(model.tokenizer, texts, seq_len, bos)
        nonempty = [i for i, n in enumerate(lengths) if n >= 1]
        self.texts = [texts[i] for i in nonempty]
        self.doc_tokens = [lengths[i] for i in nonempty]
        if not self.texts:
            raise ValueError("no training text has a token besides BOS; check the text source")
        self.groups = group_documents(self.doc_tokens, batch_size, seed)
        self.tokens_per_epoch = sum(self.doc_tokens)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # Model work done by this object: tokens computed (not read from the cache) and seconds.
        self.forward_tokens = 0
        self.forward_s = 0.0
        if self.cache_dir is not None:
            self._open_cache(batch_size, seed)

    @property
    def n_batches(self) -> int:
        return len(self.groups) * self.epochs

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    def _open_cache(self, batch_size: int, seed: int) -> None:
        meta = {
            "model": self.model.source,
            "hook_name": self.hook_name,
            "seq_len": self.seq_len,
            "batch_size": batch_size,
            "seed": seed,
            "fingerprint": fingerprint(
                self.texts, model=self.model.source, hook=self.hook_name, seq_len=self.seq_len
            ),
            "groups": len(self.groups),
            "tokens": self.tokens_per_epoch,
        }
        path = self.cache_dir / "cache.json"
        if path.exists():
            found = json.loads(path.read_text())
            if found != meta:
                differ = sorted(k for k in meta if found.get(k) != meta[k])
                raise ValueError(
                    f"activation cache {self.cache_dir} was built with other settings "
                    f"(differ: {differ}); delete it or set activations.cache_dir to a new path"
                )
            cached = sum(self._cache_file(g).exists() for g in range(len(self.groups)))
            logger.info(
                "activation cache %s: %d of %d batches", self.cache_dir, cached, len(self.groups)
            )
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(meta, indent=2))

    def _cache_file(self, group: int) -> Path:
        return self.cache_dir / f"{group:06d}.npy"

    def compute(self, group: int) -> np.ndarray:
        """Run the model on one group of documents and return its activations."""
        start = time.perf_counter()
        texts = [self.texts[i] for i in self.groups[group]]
        chunks = list(
            stream_activations(
                self.model, texts, self.hook_name, seq_len=self.seq_len, batch_size=len(texts)
            )
        )
        acts_nd = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        expected = sum(self.doc_tokens[i] for i in self.groups[group])
        if len(acts_nd) != expected:
            raise RuntimeError(
                f"activation batch {group} has {len(acts_nd)} tokens, expected {expected}; "
                "the tokenizer is not deterministic"
            )
        self.forward_tokens += len(acts_nd)
        self.forward_s += time.perf_counter() - start
        return acts_nd

    def batch(self, index: int) -> np.ndarray:
        group = index % len(self.groups)
        if self.cache_dir is None:
            return self.compute(group)
        path = self._cache_file(group)
        if path.exists():
            return np.load(path)
        acts_nd = self.compute(group)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, acts_nd)
        os.replace(tmp, path)
        return acts_nd

    def __call__(self, start: int = 0) -> Iterator[np.ndarray]:
        if start:
            logger.info("activation source starts at batch %d of %d", start, self.n_batches)
        for index in range(start, self.n_batches):
            yield self.batch(index)
