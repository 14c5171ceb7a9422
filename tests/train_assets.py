"""A tiny offline fine-tuning setup shared by the train tests: model, records, config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.config import FinetuneConfig
from train.config_io import apply_overrides, from_dict
from train.tiny import write_tiny_run


def make_tiny_run(root: Path, n_train: int = 64) -> Path:
    """Write ``root/model`` and ``root/{train,eval,test}.jsonl`` (arithmetic records)."""
    return write_tiny_run(root, n_train=n_train, seed=0)


def tiny_config(root: Path, out_dir: Path, *overrides: str, **sections: Any) -> FinetuneConfig:
    """A short full fine-tuning config on the tiny run, with ``--set``-style overrides."""
    data = {
        "model": str(root / "model"),
        "out_dir": str(out_dir),
        "data": {
            "train": str(root / "train.jsonl"),
            "max_tokens": 64,
            "tokens_per_batch": 512,
            "bucket_multiple": 64,
        },
        "optim": {"learning_rate": 3e-3, "warmup_steps": 2, "grad_clip_norm": 1.0},
        "loop": {"max_steps": 8, "log_every": 4, "save_every": 100, "progress": False},
        "eval": {"metrics": ["math", "rouge"], "max_new_tokens": 12, "batch_size": 8},
        "export": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(FinetuneConfig, apply_overrides(data, list(overrides)))
