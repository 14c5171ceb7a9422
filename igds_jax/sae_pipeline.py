"""Train an SAE on a model's activations and evaluate it on held-out text.

``train_sae_pipeline(config)`` runs ``igds sae train``. It loads the model, checks the hook
and its width, reads the texts and sets some aside, and streams activations (with an
optional disk cache) into ``sae.train.train_sae``. Then it measures L0, FVU, dead features
and the spliced-in loss on the held-out documents and adds them to the SAE directory's
``metrics.json`` under the key ``eval``. The config is ``SAEPipelineConfig`` below; its
``train`` section goes to ``sae.train`` unchanged except for provenance fields filled in
from the rest of the config.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igds_jax.sae_texts import prepare_texts
from train.config_io import load_config, to_dict

logger = logging.getLogger(__name__)

PACKAGED_MODEL_NAME = "SmolLM2-135M-Instruct"
RECORD_FORMATS = ("chat", "plain")


@dataclass
class ActivationsConfig:
    hook_name: str = "blocks.15.hook_resid_post"  # hook point the SAE reads
    context_size: int = 256  # tokens per document, BOS included; longer ones are cut
    batch_size: int = 16  # documents per forward pass (grouped by length)
    exclude_bos: bool = True  # BOS activations are outliers and never train the SAE
    prepend_bos: bool = True  # put BOS before texts whose tokenization lacks it
    epochs: int = 1  # passes over the training documents; above 1, set cache_dir too
    cache_dir: str | None = None  # keep activations on disk for later epochs and resumes


@dataclass
class EvalConfig:
    docs: int = 64  # held-out documents for L0, FVU and dead features (never trained on)
    spliced_docs: int = 32  # of those, documents for the spliced-in loss; 0 skips it
    batch_size: int = 8  # documents per forward pass


@dataclass
class SAEPipelineConfig:
    model: str | None = None  # HF directory or .gguf; None: the packaged SmolLM2 GGUF
    dtype: str = "float32"  # model parameter dtype: float32 | bfloat16
    texts: str = "demo"  # "demo" (the demo's mixed real corpus) or a local file / dataset dir
    docs: int | None = 2000  # training documents; None: every document of a file
    record_format: str = "chat"  # records (not .txt): chat (tokenizer template) | plain
    seed: int = 0  # document sampling, the held-out split and batch order
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: dict[str, Any] = field(default_factory=dict)  # sae.train.SAETrainConfig fields


def load_pipeline_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> SAEPipelineConfig:
    """Read a YAML config with ``--set`` overrides and check the settings that need no model."""
    cfg = load_config(SAEPipelineConfig, path, overrides)
    check_pipeline_config(cfg)
    return cfg


def check_pipeline_config(cfg: SAEPipelineConfig) -> None:
    """Raise ValueError naming the first setting out of range."""
    act = cfg.activations
    if not act.exclude_bos:
        raise ValueError(
            "activations.exclude_bos: false is not supported; BOS activations are outliers"
        )
    if cfg.record_format not in RECORD_FORMATS:
        raise ValueError(
            f"record_format must be one of {RECORD_FORMATS}, got {cfg.record_format!r}"
        )
    for name in ("context_size", "batch_size", "epochs"):
        if getattr(act, name) < 1:
            raise ValueError(f"activations.{name} must be >= 1, got {getattr(act, name)}")
    if act.epochs > 1 and act.cache_dir is None:
        logger.warning("activations.epochs=%d without cache_dir reruns the model", act.epochs)
    if cfg.eval.spliced_docs > cfg.eval.docs:
        raise ValueError(
            f"eval.spliced_docs ({cfg.eval.spliced_docs}) cannot exceed eval.docs ({cfg.eval.docs})"
        )
    if cfg.docs is not None and cfg.docs < 1:
        raise ValueError(f"docs must be >= 1 or null, got {cfg.docs}")
    if cfg.texts == "demo" and cfg.docs is None:
        raise ValueError("texts: demo needs a document count; set docs")


def model_name(cfg: SAEPipelineConfig) -> str:
    if cfg.model is None:
        return PACKAGED_MODEL_NAME
    path = Path(cfg.model)
    return path.stem if path.suffix == ".gguf" else path.name


def train_settings(cfg: SAEPipelineConfig) -> dict[str, Any]:
    """Return the ``train`` section with hook, context and provenance filled in from the
    rest of the config."""
    train = dict(cfg.train)
    derived = {
        "hook_name": cfg.activations.hook_name,
        "context_size": cfg.activations.context_size,
        "prepend_bos": cfg.activations.prepend_bos,
        "model_name": model_name(cfg),
        "dataset_path": cfg.texts,
    }
    for key, value in derived.items():
        if train.get(key) is None:
            train[key] = value
        elif key in ("hook_name", "context_size") and train[key] != value:
            raise ValueError(
                f"train.{key}={train[key]!r} differs from activations.{key}={value!r}; "
                f"drop train.{key} (it is taken from activations)"
            )
    return train


def load_pipeline_model(cfg_model: str | None, dtype: str):
    from igds_jax.assets import smollm2_gguf_path
    from models.loading import load_model

    path = cfg_model if cfg_model is not None else smollm2_gguf_path()
    model = load_model(path, dtype=dtype)
    if model.tokenizer is None:
        raise ValueError(f"{path}: no tokenizer next to the weights; SAE training reads text")
    return model


def check_resume_width(checkpoint_dir: str | None, d_model: int) -> None:
    """Raise ValueError when ``checkpoint_dir`` has a checkpoint of an SAE whose width is
    not the model's, before any activation is computed."""
    if not checkpoint_dir or not Path(checkpoint_dir).exists():
        return
    from sae.checkpoint import TrainCheckpointer

    checkpointer = TrainCheckpointer(checkpoint_dir, keep=1)
    try:
        step = checkpointer.latest_step()
        if step is None:
            return
        d_in = checkpointer.restore_meta(step)["d_in"]
    finally:
        checkpointer.close()
    if d_in != d_model:
        raise ValueError(
            f"{checkpoint_dir} contains an SAE with d_in={d_in} but the model's width is "
            f"{d_model}; use a new train.checkpoint_dir for this model"
        )


def evaluate(model, params, sae_cfg, heldout: list[str], cfg: SAEPipelineConfig, progress: bool):
    """Measure held-out L0, FVU, dead fraction and the spliced-in loss, with timings."""
    from igds_jax.sae_activations import ActivationSource
    from igds_jax.sae_eval import heldout_metrics, spliced_loss_metrics

    start = time.perf_counter()
    source = ActivationSource(
        model,
        heldout,
        sae_cfg.hook_name,
        seq_len=cfg.activations.context_size,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
    )
    result: dict[str, Any] = heldout_metrics(params, sae_cfg, source(), progress=progress)
    result["docs"] = len(heldout)
    if cfg.eval.spliced_docs:
        docs = heldout[: cfg.eval.spliced_docs]
        bos = model.config.bos_token_id
        keep_bos = bos is not None and all(
            model.tokenizer(t)["input_ids"][:1] == [bos] for t in docs
        )
        result["spliced"] = spliced_loss_metrics(
            model,
            params,
            sae_cfg,
            docs,
            seq_len=cfg.activations.context_size,
            batch_size=cfg.eval.batch_size,
            keep_bos=keep_bos,
            progress=progress,
        )
        result["spliced"]["docs"] = len(docs)
    result["elapsed_s"] = time.perf_counter() - start
    return result


def update_metrics(output_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Merge ``extra`` into ``output_dir/metrics.json`` (created when missing)."""
    path = Path(output_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def train_sae_pipeline(
    config: str | Path | None, overrides: list[str] | None = None, *, progress: bool = True
):
    """Run ``igds sae train``; returns ``sae.train.TrainResult`` with ``metrics['eval']``."""
    from igds_jax.activations import hook_dim_check
    from igds_jax.sae_activations import ActivationSource
    from sae.train import load_train_config, train_sae

    wall_start = time.perf_counter()
    cfg = load_pipeline_config(config, overrides)
    train_cfg = load_train_config({"train": train_settings(cfg)})
    model = load_pipeline_model(cfg.model, cfg.dtype)
    d_model = model.config.d_model
    hook_dim_check(model, train_cfg.d_in or d_model, cfg.activations.hook_name)
    check_resume_width(train_cfg.checkpoint_dir, d_model)

    train_texts, heldout = prepare_texts(cfg, model.tokenizer, model.config.bos_token_id)
    act = cfg.activations
    source = ActivationSource(
        model,
        train_texts,
        act.hook_name,
        seq_len=act.context_size,
        batch_size=act.batch_size,
        seed=cfg.seed,
        epochs=act.epochs,
        cache_dir=act.cache_dir,
    )
    needed = train_cfg.steps * train_cfg.batch_size
    logger.info(
        "%d training documents give %d tokens per epoch (%d epochs); %d steps use %d",
        len(source.texts),
        source.tokens_per_epoch,
        act.epochs,
        train_cfg.steps,
        needed,
    )
    if needed > source.total_tokens:
        logger.warning(
            "the texts give %d tokens but %d steps of %d need %d; training stops early",
            source.total_tokens,
            train_cfg.steps,
            train_cfg.batch_size,
            needed,
        )
    result = train_sae(source, train_cfg, progress=progress)
    eval_metrics = evaluate(model, result.params, result.cfg, heldout, cfg, progress)
    result.metrics["eval"] = eval_metrics
    extra = {
        "eval": eval_metrics,
        "pipeline_config": to_dict(cfg),
        "source": {
            "model": model.source,
            "train_docs": len(source.texts),
            "tokens_per_epoch": source.tokens_per_epoch,
            "forward_tokens_this_run": source.forward_tokens,
            "forward_s_this_run": source.forward_s,
        },
        "wall_s_this_run": time.perf_counter() - wall_start,
    }
    result.metrics.update(extra)
    if train_cfg.output_dir:
        path = update_metrics(train_cfg.output_dir, extra)
        logger.info("wrote %s", path)
    return result


def evaluate_sae_dir(
    sae_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    hook_name: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``igds sae eval``: held-out metrics of the SAE in ``sae_dir``, written to ``out``
    (default ``<sae_dir>/eval.json``).

    Text settings default to those the SAE was trained with (``pipeline_config`` in its
    ``metrics.json``), so the held-out documents are the ones training left out.
    ``overrides`` (``key=value``) change them.
    """
    from igds_jax.activations import hook_dim_check
    from sae.formats import load_sae
    from train.config_io import apply_overrides, from_dict

    wall_start = time.perf_counter()
    sae_dir = Path(sae_dir)
    params, sae_cfg = load_sae(sae_dir)
    metrics_file = sae_dir / "metrics.json" if sae_dir.is_dir() else None
    base: dict[str, Any] = {}
    if metrics_file is not None and metrics_file.exists():
        base = json.loads(metrics_file.read_text()).get("pipeline_config", {})
    base.pop("train", None)
    cfg = from_dict(SAEPipelineConfig, apply_overrides(base, overrides or []), "sae eval")
    check_pipeline_config(cfg)
    hook = hook_name or sae_cfg.hook_name
    if not hook:
        raise ValueError(f"{sae_dir}: the SAE config names no hook; pass --hook")
    sae_cfg = sae_cfg.replace(hook_name=hook)
    model = load_pipeline_model(cfg.model, cfg.dtype)
    hook_dim_check(model, sae_cfg.d_in, hook)
    _, heldout = prepare_texts(cfg, model.tokenizer, model.config.bos_token_id)
    result = evaluate(model, params, sae_cfg, heldout, cfg, progress)
    report = {
        "sae": str(sae_dir),
        "model": model.source,
        "hook_name": hook,
        "eval": result,
        "pipeline_config": to_dict(cfg),
        "wall_s": time.perf_counter() - wall_start,
    }
    if out is None:
        out = (sae_dir if sae_dir.is_dir() else sae_dir.parent) / "eval.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    logger.info("wrote %s", out)
    return report


__all__ = [
    "ActivationsConfig",
    "EvalConfig",
    "SAEPipelineConfig",
    "evaluate",
    "evaluate_sae_dir",
    "load_pipeline_config",
    "train_sae_pipeline",
]
