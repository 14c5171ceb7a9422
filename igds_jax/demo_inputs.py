"""Inputs of ``igds demo``: the real records as JSONL files, and the SAE (trained once, cached).

Records (``build_records``), written to ``<out_dir>/data/``:

- ``task.jsonl``: task records from the ``source`` templates (frequency recall);
- ``dev.jsonl``: records from the ``dev`` templates (causal validation);
- ``test.jsonl``: records from the ``test`` templates, held out (only ``igds compare`` reads
  them);
- ``pool.jsonl``: the candidate pool, task records from ``source`` templates (other
  variants than ``task.jsonl``) mixed with non-math records (sae-probes, Shakespeare);
- ``reference.jsonl``: non-math records for contrastive recall, none of them in the pool;
- ``splits.json``: template ids per split and the pool's composition.

The SAE (``demo_sae``) is trained by ``igds_jax.sae_pipeline.train_sae_pipeline`` and stored
under ``<cache>/demo-sae/<key>/`` (or ``sae.cache_dir``). The key is a hash of the resolved
SAE config and the model, so a rerun with the same settings reuses the SAE, and a changed
setting trains a new one. An interrupted training run resumes from its checkpoints there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

from igds_jax import demo_data
from igds_jax.assets import cache_root
from igds_jax.demo_config import DemoConfig
from train.config_io import to_dict

logger = logging.getLogger(__name__)

SAE_CACHE_DIR = "demo-sae"
SAE_DONE = "demo-sae-complete.json"
# Fields that say where outputs go or how often to log; they do not change the SAE.
_PLACE_FIELDS = ("output_dir", "checkpoint_dir", "checkpoint_every", "log_every")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _first_variants(records: list[dict], count: int) -> list[dict]:
    return [r for r in records if r["meta"]["variant"] < count]


def _math_task(cfg: DemoConfig) -> dict[str, list[dict]]:
    data = cfg.data
    max_variants = max(data.task_variants, data.dev_variants, data.test_variants)
    splits = demo_data.gsm_splits(max_variants, data.seed, data.fractions)
    return {
        "task": _first_variants(splits["source"], data.task_variants),
        "dev": _first_variants(splits["dev"], data.dev_variants),
        "test": _first_variants(splits["test"], data.test_variants),
    }


def _translation_task(cfg: DemoConfig) -> tuple[dict[str, list[dict]], list[dict]]:
    """Translation pairs per split; the source pairs are cut in two: task and pool."""
    data = cfg.data
    splits = demo_data.translation_splits(
        data.language, data.seed, data.fractions, fields=("question", "answer")
    )
    source = list(splits["source"])
    random.Random(f"translation-pool:{data.seed}").shuffle(source)
    half = len(source) // 2
    return {"task": source[:half], "dev": splits["dev"], "test": splits["test"]}, source[half:]


def _reference(cfg: DemoConfig, pool: list[dict]) -> list[dict]:
    """Non-math records drawn with another seed, minus any that are in the pool."""
    if cfg.data.reference == 0:
        return []
    in_pool = {r["id"] for r in pool}
    extra = cfg.data.reference + len(in_pool)
    candidates = demo_data.other_records(extra, seed=cfg.data.seed + 1)
    return [r for r in candidates if r["id"] not in in_pool][: cfg.data.reference]


def build_records(cfg: DemoConfig, data_dir: Path) -> dict[str, Any]:
    """Write the demo's JSONL files into ``data_dir``; return their counts and composition."""
    data = cfg.data
    pool = demo_data.build_pool(
        data.pool_math,
        data.pool_other,
        data.seed,
        fractions=data.fractions,
        task_variants_per_template=data.task_variants,
    )
    records = pool.records
    if data.task == "math":
        task = _math_task(cfg)
    else:
        task, pool_pairs = _translation_task(cfg)
        records = records + pool_pairs
        random.Random(f"pool:{data.seed}").shuffle(records)
    reference = _reference(cfg, records)
    paths = {name: write_jsonl(data_dir / f"{name}.jsonl", rows) for name, rows in task.items()}
    paths["pool"] = write_jsonl(data_dir / "pool.jsonl", records)
    if reference:
        paths["reference"] = write_jsonl(data_dir / "reference.jsonl", reference)

    templates = {
        name: sorted({r["meta"]["template_id"] for r in rows}) for name, rows in task.items()
    }
    templates["pool"] = sorted(
        {r["meta"]["template_id"] for r in records if "template_id" in r["meta"]}
    )
    by_task: dict[str, int] = {}
    for r in records:
        key = f"{r['source']}/{r['meta']['task']}"
        by_task[key] = by_task.get(key, 0) + 1
    n_task = sum(1 for r in records if r["meta"]["task"] == data.task)
    info = {
        "task": data.task,
        "counts": {name: len(rows) for name, rows in task.items()}
        | {"pool": len(records), "reference": len(reference)},
        "pool_task_share": n_task / max(1, len(records)),
        "pool_math_share": sum(r["meta"]["task"] == "math" for r in records) / len(records),
        "pool_composition": dict(sorted(by_task.items())),
        "templates": templates,
        "files": {name: str(path) for name, path in paths.items()},
    }
    (data_dir / "splits.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info(
        "demo data: %s; pool %s share %.3f",
        info["counts"],
        data.task,
        info["pool_task_share"],
    )
    return info


# --------------------------------------------------------------------------------- SAE


def sae_overrides(cfg: DemoConfig) -> list[str]:
    """The SAE config overrides: the demo's model and seed, then ``sae.overrides``.

    The demo corpus takes its GSM documents from the ``source`` templates of the split with
    its own seed, so the SAE must use the demo's seed to never read a dev or test problem.
    """
    out = [f"seed={cfg.data.seed}"]
    if cfg.model is not None:
        out.append(f"model={cfg.model}")
    return out + list(cfg.sae.overrides)


def sae_key(pipeline_cfg: Any) -> str:
    """Hash of everything that determines the trained SAE (not where it is written)."""
    settings = to_dict(pipeline_cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in _PLACE_FIELDS}
    settings["activations"].pop("cache_dir", None)
    if settings["model"] is not None:
        model = Path(settings["model"]).resolve()
        settings["model"] = str(model)
        weights = [model] if model.is_file() else sorted(model.glob("*.safetensors"))
        settings["model_files"] = [(p.name, p.stat().st_size, p.stat().st_mtime) for p in weights]
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demo_sae(cfg: DemoConfig, *, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Return the SAE directory for the demo, training the SAE on first use.

    Returns ``(path, info)``; ``info`` says whether it came from the cache, its key and its
    held-out metrics.
    """
    if cfg.sae.path is not None:
        path = Path(cfg.sae.path)
        if not path.exists():
            raise FileNotFoundError(f"sae.path {path} does not exist; unset it to train one")
        return path, {"source": "given", "path": str(path)}

    from igds_jax.sae_pipeline import load_pipeline_config, train_sae_pipeline

    overrides = sae_overrides(cfg)
    pipeline_cfg = load_pipeline_config(cfg.sae.config, overrides)
    fractions = tuple(cfg.data.fractions)
    if pipeline_cfg.texts == "demo" and fractions != demo_data.DEFAULT_FRACTIONS:
        raise ValueError(
            f"data.fractions={list(fractions)} differs from the SAE corpus split "
            f"{list(demo_data.DEFAULT_FRACTIONS)}, so the SAE could read dev or test problems; "
            "keep the default fractions or pass sae.path"
        )
    key = sae_key(pipeline_cfg)
    sae_cache = cfg.sae.cache_dir or cache_root(cfg.cache_dir) / SAE_CACHE_DIR
    root = Path(sae_cache).expanduser() / key
    sae_dir = root / "sae"
    done = root / SAE_DONE
    if done.is_file() and (sae_dir / "cfg.json").is_file():
        info = json.loads(done.read_text())
        logger.info("using the cached SAE %s (trained in %.0f s)", sae_dir, info["train_wall_s"])
        return sae_dir, {**info, "source": "cache"}

    logger.info("training the demo SAE into %s (first run; later runs reuse it)", root)
    overrides += [
        f"train.output_dir={sae_dir}",
        f"train.checkpoint_dir={root / 'checkpoints'}",
        f"activations.cache_dir={root / 'activations'}",
    ]
    result = train_sae_pipeline(cfg.sae.config, overrides, progress=progress)
    evaluation = result.metrics["eval"]
    info = {
        "key": key,
        "path": str(sae_dir),
        "config": cfg.sae.config,
        "overrides": overrides,
        "train_wall_s": result.metrics["wall_s_this_run"],
        "eval": {k: evaluation[k] for k in ("l0", "fvu", "dead_fraction", "tokens")},
        "spliced": evaluation.get("spliced"),
    }
    done.write_text(json.dumps(info, indent=2, default=float) + "\n")
    _drop_activation_cache(root / "activations")
    return sae_dir, {**info, "source": "trained"}


def _drop_activation_cache(path: Path) -> None:
    """Delete the training activations (hundreds of MB) once the SAE is saved."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
