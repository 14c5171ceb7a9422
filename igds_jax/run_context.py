"""State of one ``igds`` command in its run directory: config, model, datasets, timings.

A :class:`Run` loads the model, the SAE and each dataset at most once, records every
dataset's load report (rows kept and skipped, by reason) and tokenization counts in
``summary.json``, and times the steps. ``select_and_write`` is the selection step shared
by FRS and the baselines.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from igds_jax import run_files
from igds_jax.method_config import MethodConfig, validate
from igds_jax.method_inputs import Assets, encode, field_names, load_assets, load_dataset
from igds_jax.selection import Selection, select_top, write_selection
from train.config_io import save_resolved
from train.records import Record
from train.tokenize import EncodedExample

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Records of one input file and, once tokenized, their encoded examples."""

    records: list[Record]
    examples: list[EncodedExample] | None = None

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


@dataclass
class Run:
    """One command's work in a run directory; loads the model and datasets once."""

    cfg: MethodConfig
    _assets: Assets | None = None
    _datasets: dict[str, Dataset] = field(default_factory=dict)
    # results that several steps of one command share, e.g. the pool's response losses
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def assets(self) -> Assets:
        """Return the model and SAE, loading them on first use."""
        if self._assets is None:
            with self.timed("setup", "load_model_and_sae"):
                self._assets = load_assets(self.cfg)
        return self._assets

    def dataset(self, role: str, path: str | None = None) -> Dataset:
        """Load (once) the records of ``role``: task, dev, pool, reference or other_task.

        ``path`` defaults to ``data.<role>`` of the config.
        """
        if role not in self._datasets:
            path = path if path is not None else getattr(self.cfg.data, role)
            records, report = load_dataset(path, self.cfg.data, role)
            run_files.update_summary(self.run_dir, "data", {role: report.to_dict()})
            self._datasets[role] = Dataset(records)
        return self._datasets[role]

    def encoded(self, name: str, records: list[Record] | None = None) -> list[EncodedExample]:
        """Tokenize the loaded dataset ``name``, or ``records`` reported under ``name``."""
        dataset = self._datasets[name] if records is None else Dataset(records)
        if dataset.examples is None:
            examples, report = encode(self.assets().tokenizer, dataset.records, self.cfg.data)
            counts = {
                "num_examples": report.num_examples,
                "num_truncated": report.num_truncated,
                "num_tokens": int(sum(e.length for e in examples)),
            }
            run_files.update_summary(self.run_dir, "tokenized", {name: counts})
            dataset.examples = examples
        return dataset.examples

    def encoded_lengths(self, name: str) -> np.ndarray | None:
        """Return the token count of each example of ``name`` if it was tokenized, else None."""
        dataset = self._datasets.get(name)
        if dataset is None or dataset.examples is None:
            return None
        return np.asarray([e.length for e in dataset.examples], np.int64)

    @contextlib.contextmanager
    def timed(self, section: str, name: str, tokens: int = 0) -> Iterator[None]:
        """Record a step's seconds (and real tokens per second, when ``tokens`` is given)
        in ``summary.json`` under ``timings_s`` and ``tokens_per_s``, keyed ``section/name``."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        key = f"{section}/{name}"
        run_files.update_summary(self.run_dir, "timings_s", {key: round(seconds, 3)})
        if tokens:
            rate = round(tokens / max(seconds, 1e-9), 1)
            run_files.update_summary(self.run_dir, "tokens_per_s", {key: rate})
        logger.info("%s took %.1f s", key, seconds)

    def batch_kwargs(self) -> dict[str, Any]:
        """Return the bucketing arguments every model pass shares."""
        data = self.cfg.data
        return dict(
            max_tokens=data.max_tokens,
            bucket_multiple=data.bucket_multiple,
            pad_id=self.assets().pad_id,
        )


def start(cfg: MethodConfig) -> Run:
    """Validate ``cfg``, create the run directory and write the resolved config."""
    validate(cfg)
    run = Run(cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run.run_dir / "config.yaml")
    return run


def selection_size(cfg: MethodConfig, pool_size: int) -> int:
    """Return how many examples ``select_top`` keeps before any token budget."""
    if cfg.select.count is not None:
        return min(cfg.select.count, pool_size)
    if cfg.select.fraction is None:
        return pool_size
    return int(np.floor(cfg.select.fraction * pool_size + 1e-9))


def select_and_write(
    run: Run,
    out_dir: Path,
    pool: Dataset,
    scores_n: np.ndarray,
    *,
    token_counts_n: np.ndarray | None = None,
) -> tuple[Selection, dict[str, Any]]:
    """Select pool examples by ``scores_n`` and write the selection files into ``out_dir``.

    Returns the selection and its counts for the summary. ``token_counts_n`` (tokens per
    example) is used only with ``select.token_budget``; by default the pool is tokenized.
    """
    cfg = run.cfg.select
    if cfg.token_budget is not None and token_counts_n is None:
        token_counts_n = np.asarray([e.length for e in run.encoded("pool")])
    selection = select_top(
        pool.ids,
        scores_n,
        fraction=cfg.fraction if cfg.count is None else None,
        count=cfg.count,
        token_budget=cfg.token_budget,
        token_counts_n=token_counts_n,
    )
    written = []
    for fmt in cfg.formats:
        path = write_selection(
            out_dir / f"selection.{fmt}",
            pool.records,
            selection,
            fields=field_names(run.cfg.data),
            add_messages=cfg.add_messages,
        )
        written.append(str(path.relative_to(run.run_dir)))
    counts = {
        "num_pool": selection.num_pool,
        "num_selected": len(selection.indices),
        "num_ineligible": selection.num_ineligible,
        "files": written,
    }
    logger.info("selected %d of %d pool examples", len(selection.indices), selection.num_pool)
    return selection, counts
