"""The fine-tuning run: load, train with checkpoints and logs, export, evaluate.

A run directory ``out_dir`` ends up with:

- ``config.yaml``: the resolved config; ``run.json``: counts and timings.
- ``metrics.jsonl``: one row per log interval (loss, lr, grad norm, tokens/s) and per
  held-out evaluation; ``loss.png``: the loss curves.
- ``checkpoints/<step>``: Orbax checkpoints (see :mod:`train.checkpoint`).
- ``model/``: the trained model in HF format (LoRA merged); ``adapter/`` for LoRA runs.
- ``eval/``: test-set predictions and metrics when ``data.test`` is set.

SIGINT and SIGTERM stop the run after the current step with a checkpoint, so a rerun of
the same command continues at the next step with the same batches.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from models.loading import LoadedModel, abstract_model, load_model, resolve_dtype
from models.sharding import make_mesh, param_sharding, put_batch
from train import plots
from train.batching import StepSchedule, eval_batches
from train.checkpoint import Checkpointer, check_fingerprint
from train.config import FinetuneConfig, validate
from train.config_io import save_resolved
from train.data import encode, pad_id, read_records
from train.evaluate import evaluate_model
from train.export import export_hf, source_hf_config
from train.lora import LoraSpec, init_lora, save_lora
from train.params import Params, count_params, flatten_state, unflatten_state
from train.record_files import data_sha256
from train.sft import cached_step_functions, learning_rate_schedule, optimizer_key

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], bool | None]


@dataclass
class FinetuneResult:
    """Outputs of a finished or interrupted run."""

    out_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    interrupted: bool  # stopped early by a signal or callback, with a checkpoint
    params: Params  # full parameters after training (LoRA merged)
    model: LoadedModel  # the base model as loaded (graphdef, config, tokenizer)
    metrics: dict[str, float] = field(default_factory=dict)  # final evaluation


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the default handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        logger.warning("signal %d: stopping after this step with a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _place_like(opt_state: Any, trainable: Any, mesh: Mesh) -> Any:
    """Give optimizer-state subtrees shaped like ``trainable`` its shardings, and replicate
    the rest (step counts). The train step returns arrays sharded this way, so the second
    step reuses the first step's compiled code."""
    structure = jax.tree.structure(trainable)
    shardings = jax.tree.map(lambda x: x.sharding, trainable)

    def is_param_tree(node: Any) -> bool:
        return jax.tree.structure(node) == structure

    def place(node: Any) -> Any:
        if is_param_tree(node):
            return _place(node, shardings)
        return jax.device_put(node, _replicated(mesh))

    return jax.tree.map(place, opt_state, is_leaf=lambda n: is_param_tree(n) or hasattr(n, "shape"))


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _place(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(jax.device_put, tree, shardings)


def run_finetune(
    cfg: FinetuneConfig,
    *,
    callback: StepCallback | None = None,
    model: LoadedModel | None = None,
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data.train``; see the module docstring for outputs.

    ``callback(step, stats)`` runs after every step (``step`` counts finished steps) with
    the step's float stats; returning True stops the run as a signal would. ``model``
    reuses an already loaded base model instead of reading ``cfg.model`` again.
    """
    validate(cfg)
    loop, data = cfg.loop, cfg.data
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir / "config.yaml")
    timings: dict[str, float] = {}

    # model and mesh.
    start = time.perf_counter()
    devices = jax.devices()
    if loop.mesh_data != -1:
        devices = devices[: loop.mesh_data * loop.mesh_model]
    mesh = make_mesh((loop.mesh_data, loop.mesh_model), devices=devices)
    param_dtype = resolve_dtype(loop.param_dtype)
    # The train step donates its inputs. A caller's model must survive the run, so its
    # weights are copied first. A model loaded here is trained in place.
    keep_base = model is not None
    if model is None:
        model = load_model(cfg.model, dtype=param_dtype)
    if model.tokenizer is None:
        raise ValueError(f"{cfg.model}: no tokenizer next to the weights; training needs one")
    graphdef, template = abstract_model(model.config, param_dtype)
    params = {
        k: jnp.array(v, dtype=param_dtype, copy=keep_base)
        for k, v in flatten_state(model.state).items()
    }
    if not keep_base:
        model.state = None  # its buffers are donated to the first train step
    shapes = {k: v.shape for k, v in params.items()}
    if loop.param_sharding == "model":
        shardings = {k: param_sharding(mesh, k, shape, model.config) for k, shape in shapes.items()}
    else:
        shardings = {k: _replicated(mesh) for k in shapes}
    params = _place(params, shardings)
    timings["load_s"] = time.perf_counter() - start

    # data.
    start = time.perf_counter()
    pad = pad_id(model.tokenizer, model.config.pad_token_id)
    records = read_records(data.train, data, data.max_examples)
    examples = encode(model.tokenizer, records, data)
    schedule = StepSchedule(
        examples,
        tokens_per_batch=data.tokens_per_batch,
        bucket_multiple=data.bucket_multiple,
        max_len=data.max_tokens,
        accum_steps=cfg.optim.grad_accum_steps,
        row_multiple=mesh.shape["data"],
        seed=cfg.seed,
        pad_id=pad,
    )
    if loop.max_steps is not None:
        total_steps = loop.max_steps
    else:
        total_steps = max(1, math.ceil(loop.epochs * schedule.steps_per_epoch))
    eval_examples = None
    if data.eval:
        eval_examples = encode(model.tokenizer, read_records(data.eval, data), data)
    timings["data_s"] = time.perf_counter() - start
    logger.info(
        "training on %d examples: %d steps per epoch, %d steps in all, mesh %s",
        len(examples),
        schedule.steps_per_epoch,
        total_steps,
        dict(mesh.shape),
    )

    # trainable tree and optimizer.
    # NOTE: the train step is deterministic (no dropout), so after the LoRA init nothing
    # draws from this key; it is checkpointed so a stochastic step could resume its stream.
    key = jax.random.key(cfg.seed)
    lora_spec = None
    if cfg.lora.enabled:
        lora_spec = LoraSpec(cfg.lora.rank, cfg.lora.alpha, tuple(cfg.lora.target_modules))
        adapters = init_lora(
            params,
            lora_spec,
            jax.random.fold_in(key, 1),
            init_std=cfg.lora.init_std,
            dtype=param_dtype,
        )
        trainable: Any = _place(adapters, jax.tree.map(lambda _: _replicated(mesh), adapters))
        frozen = params
    else:
        trainable, frozen = params, {}
    lr_schedule = learning_rate_schedule(cfg.optim, total_steps)
    fns = cached_step_functions(
        model.config,
        loop.param_dtype,
        optimizer_key(cfg.optim),
        lora_spec.scale if lora_spec else None,
        loop.compute_dtype,
    )
    opt_state = _place_like(jax.jit(fns.tx.init)(trainable), trainable, mesh)
    n_trainable = sum(int(x.size) for x in jax.tree.leaves(trainable))
    logger.info("trainable parameters: %d of %d", n_trainable, count_params(params))

    # resume.
    fingerprint = {
        "model": cfg.model,
        "train": data.train,
        "train_sha256": data_sha256(data.train),
        "num_examples": len(examples),
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": total_steps,
        "seed": cfg.seed,
        "lora": [lora_spec.rank, lora_spec.alpha, list(lora_spec.target_modules)]
        if lora_spec
        else None,
    }
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=loop.keep_checkpoints)
    step, tokens_seen = 0, 0
    latest = checkpointer.latest_step() if loop.resume else None
    if latest is not None:
        like = {"trainable": trainable, "opt_state": opt_state, "key": jax.random.key_data(key)}
        restored, meta = checkpointer.restore(latest, like)
        check_fingerprint(meta, fingerprint, checkpointer.directory)
        trainable, opt_state = restored["trainable"], restored["opt_state"]
        key = jax.random.wrap_key_data(restored["key"])
        step, tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        logger.info("resuming at step %d of %d", step, total_steps)
    elif not loop.resume and checkpointer.latest_step() is not None:
        logger.warning("loop.resume=false: ignoring checkpoints in %s", checkpointer.directory)

    def save(at_step: int) -> None:
        epoch, index = divmod(at_step, schedule.steps_per_epoch)
        state = {"trainable": trainable, "opt_state": opt_state, "key": jax.random.key_data(key)}
        meta = {
            "step": at_step,
            "epoch": epoch,
            "step_in_epoch": index,
            "tokens_seen": tokens_seen,
            "fingerprint": fingerprint,
        }
        checkpointer.save(at_step, state, meta)

    def heldout() -> float:
        total, count = 0.0, 0.0
        for batch in eval_batches(
            eval_examples,
            tokens_per_batch=data.tokens_per_batch,
            bucket_multiple=data.bucket_multiple,
            row_multiple=mesh.shape["data"],
            pad_id=pad,
        ):
            batch = put_batch(mesh, batch)
            loss_sum, n = fns.loss_sums(trainable, frozen, batch)
            total, count = total + float(loss_sum), count + float(n)
        return total / max(count, 1.0)

    # train.
    metrics_path = out_dir / "metrics.jsonl"
    # step batches are [accum, rows, length]: rows go over 'data'.
    # NOTE: one process only. jax.device_put of a host batch needs every mesh device to be
    # addressable, so a mesh spanning processes fails here.
    step_sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
    window: list[dict[str, Any]] = []
    window_start = time.perf_counter()
    train_start, start_step = time.perf_counter(), step
    interrupted = False
    bar = tqdm(
        total=total_steps, initial=step, desc="finetune", disable=not loop.progress, unit="step"
    )
    with _StopFlag() as stop:
        try:
            while step < total_steps:
                host_batch = schedule.batch(step)
                real_tokens = int(host_batch["attention_mask"].sum())
                batch = jax.tree.map(lambda x: jax.device_put(x, step_sharding), host_batch)
                lr = jnp.float32(lr_schedule(step))
                trainable, opt_state, stats = fns.train_step(
                    trainable, opt_state, frozen, batch, lr
                )
                step += 1
                tokens_seen += real_tokens
                window.append({"stats": stats, "tokens": real_tokens})
                bar.update(1)

                if step % loop.log_every == 0 or step == total_steps:
                    row = _log_row(window, window_start, step, lr_schedule, schedule)
                    row["tokens_seen"] = tokens_seen
                    _append_jsonl(metrics_path, row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    logger.info(
                        "step %d/%d loss %.4f lr %.3g grad_norm %.3g tokens/s %.0f",
                        step,
                        total_steps,
                        row["loss"],
                        row["lr"],
                        row["grad_norm"],
                        row["tokens_per_s"],
                    )
                    window, window_start = [], time.perf_counter()

                if eval_examples and loop.eval_every and step % loop.eval_every == 0:
                    _append_jsonl(metrics_path, {"step": step, "eval_loss": heldout()})

                if callback is not None:
                    stats_host = {k: float(v) for k, v in jax.device_get(stats).items()}
                    if callback(step, stats_host):
                        stop.requested = True
                if stop.requested and step < total_steps:
                    save(step)
                    interrupted = True
                    break
                if step % loop.save_every == 0 or step == total_steps:
                    save(step)
        finally:
            bar.close()
            checkpointer.close()
    timings["train_s"] = time.perf_counter() - train_start

    full = fns.full_params(trainable, frozen)
    result = FinetuneResult(out_dir, step, total_steps, interrupted, full, model)
    if interrupted:
        logger.warning("stopped at step %d of %d; rerun to resume", step, total_steps)
        return result

    # finish: held-out loss, export, test evaluation.
    if eval_examples:
        _append_jsonl(metrics_path, {"step": step, "eval_loss": heldout()})
    plots.plot_losses(metrics_path, out_dir / "loss.png")
    if lora_spec is not None:
        save_lora(out_dir / "adapter", trainable, lora_spec)
    if cfg.export.enabled:
        hf_config = source_hf_config(model.source)
        export_hf(
            out_dir / "model",
            full,
            model.config,
            hf_config=hf_config,
            tokenizer=model.tokenizer,
            dtype=cfg.export.dtype,
        )
    if cfg.eval.at_end and data.test:
        start = time.perf_counter()
        state = unflatten_state(template, full)
        result.metrics = evaluate_model(
            graphdef, state, model.tokenizer, model.config, cfg, out_dir / "eval"
        )
        timings["eval_s"] = time.perf_counter() - start

    run_info = {
        "steps": step,
        "steps_this_session": step - start_step,
        "total_steps": total_steps,
        "steps_per_epoch": schedule.steps_per_epoch,
        "num_examples": len(examples),
        "train_sha256": fingerprint["train_sha256"],
        "tokens_seen": tokens_seen,
        "trainable_parameters": n_trainable,
        "timings": timings,
        "metrics": result.metrics,
    }
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=2))
    return result


def _log_row(
    window: list[dict[str, Any]],
    window_start: float,
    step: int,
    lr_schedule: Any,
    schedule: StepSchedule,
) -> dict[str, Any]:
    """Token-weighted loss, mean grad norm and throughput over the steps since the last log."""
    stats = jax.device_get([w["stats"] for w in window])
    elapsed = time.perf_counter() - window_start
    weights = np.asarray([float(s["tokens"]) for s in stats])
    losses = np.asarray([float(s["loss"]) for s in stats])
    tokens = sum(w["tokens"] for w in window)
    return {
        "step": step,
        "epoch": step / schedule.steps_per_epoch,
        "loss": float((losses * weights).sum() / max(weights.sum(), 1.0)),
        "lr": float(lr_schedule(step - 1)),
        "grad_norm": float(np.mean([float(s["grad_norm"]) for s in stats])),
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "response_tokens": int(weights.sum()),
        "step_s": elapsed / len(window),
    }
