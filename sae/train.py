"""Train a TopK or BatchTopK SAE on streamed activations, with resumable checkpoints.

The activation source is any iterator of ``[n, d_in]`` float32 arrays (for example
residual-stream activations at one hook, BOS excluded). A source that can seek may be
passed as a callable ``start -> iterator`` instead. On resume it is called with the
number of source batches already consumed. A plain iterator is advanced by reading and
discarding that many batches.

Each checkpoint (orbax ``CheckpointManager``) holds the train state (params, Adam state,
step, steps since each feature fired, RNG key), the shuffle buffer's rows and position,
and the metric history, so an interrupted run resumes to the same final params.

With ``normalize_activations="expected_average_only_in"`` inputs are multiplied by
``sqrt(d_in) / mean ||x||`` (measured on the first batch) during training; the returned
and saved SAE has the factor folded in and reads raw activations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from tqdm.auto import tqdm

from sae.buffer import ActivationBuffer
from sae.checkpoint import TrainCheckpointer
from sae.config import SAEConfig
from sae.formats import fold_norm_scaling_factor, save_saelens
from sae.params import SAEParams
from sae.train_step import StepSettings, TrainState, geometric_median, init_params, make_step_fn

logger = logging.getLogger(__name__)

ActivationSource = Iterator[np.ndarray] | Callable[[int], Iterator[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SAETrainConfig:
    """Hyperparameters and outputs of one SAE training run."""

    # "topk" (k active features per token) or "batchtopk" (k per token on average)
    architecture: str = "topk"
    d_sae: int = 4096
    k: int = 32
    # activation width; None takes it from the first batch
    d_in: int | None = None
    # Adam learning rate, linear warmup from 0, linear decay to 0 over the final fraction
    lr: float = 3e-4
    warmup_steps: int = 1000
    lr_decay_fraction: float = 0.2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    steps: int = 30_000
    # tokens per optimizer step
    batch_size: int = 4096
    # AuxK loss weight (Gao et al. use 1/32) and number of dead features it uses
    # (None: d_in // 2)
    aux_k_coef: float = 1 / 32
    aux_k: int | None = None
    # a feature that fires in none of this many consecutive steps counts as dead
    dead_feature_window: int = 1000
    # "geometric_median", "mean" or "zeros", computed on the first batch
    b_dec_init: str = "geometric_median"
    # "none" or "expected_average_only_in" (scale inputs to mean norm sqrt(d_in))
    normalize_activations: str = "expected_average_only_in"
    # capacity of the shuffle buffer, in tokens
    shuffle_buffer_tokens: int = 65_536
    # EMA rate of BatchTopK's inference threshold
    batchtopk_threshold_lr: float = 0.01
    seed: int = 0
    log_every: int = 50
    # orbax checkpoints; None disables checkpointing and resume
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    # final SAE in SAELens format plus metrics.json; None skips saving
    output_dir: str | None = None
    # provenance written into the SAE's cfg.json
    hook_name: str = ""
    model_name: str | None = None
    dataset_path: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "batchtopk"):
            raise ValueError(
                f"training supports architecture 'topk' or 'batchtopk', got "
                f"{self.architecture!r}; ReLU and JumpReLU SAEs need a sparsity penalty this "
                "trainer does not implement"
            )
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "dead_feature_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ValueError(
                f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {self.b_dec_init!r}"
            )
        if self.normalize_activations not in ("none", "expected_average_only_in"):
            raise ValueError(
                f"normalize_activations must be 'none' or 'expected_average_only_in' for "
                f"training, got {self.normalize_activations!r}"
            )
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError(f"lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}")


@dataclasses.dataclass
class TrainResult:
    """Trained SAE (reads raw activations) and the run's metrics."""

    params: SAEParams
    cfg: SAEConfig
    metrics: dict[str, Any]


def load_train_config(config: str | Path | Mapping[str, Any], **overrides: Any) -> SAETrainConfig:
    """Build an ``SAETrainConfig`` from a YAML file or mapping.

    Reads the ``train`` section when present (other sections, such as ``activations``,
    belong to the activation source), else the whole mapping. Unknown keys raise
    ValueError naming them.
    """
    source = "config"
    if isinstance(config, str | Path):
        source = str(config)
        with open(config) as f:
            config = yaml.safe_load(f) or {}
    section = dict(config.get("train", config))
    section.update(overrides)
    known = {f.name for f in dataclasses.fields(SAETrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{source}: unknown SAE training fields {unknown}; known: {sorted(known)}")
    return SAETrainConfig(**section)


def lr_schedule(cfg: SAETrainConfig) -> optax.Schedule:
    """Linear warmup to ``lr``, constant, then linear decay to 0 over the final fraction."""
    warmup = min(cfg.warmup_steps, cfg.steps)
    decay = int(cfg.steps * cfg.lr_decay_fraction)
    constant = max(cfg.steps - warmup - decay, 0)
    parts = [
        optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
        optax.constant_schedule(cfg.lr),
        optax.linear_schedule(cfg.lr, 0.0, max(decay, 1)),
    ]
    return optax.join_schedules(parts, [warmup, warmup + constant])


def _sae_config(cfg: SAETrainConfig, d_in: int) -> SAEConfig:
    """Config of the SAE being trained; its inputs arrive already scaled."""
    return SAEConfig(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=cfg.d_sae,
        k=cfg.k,
        hook_name=cfg.hook_name,
        apply_b_dec_to_input=True,
        normalize_activations="none",
        model_name=cfg.model_name,
        dataset_path=cfg.dataset_path,
        context_size=cfg.context_size,
        prepend_bos=cfg.prepend_bos,
    )


def _open_source(activation_batches: ActivationSource, start: int) -> Iterator[np.ndarray]:
    if callable(activation_batches) and not hasattr(activation_batches, "__next__"):
        return iter(activation_batches(start))
    source = iter(activation_batches)
    if start:
        logger.info("advancing the activation iterator past %d consumed batches", start)
        for _ in range(start):
            next(source)
    return source


def _resume_key(cfg: SAETrainConfig) -> dict[str, Any]:
    """Config fields that must match for a checkpoint to be resumed (not output paths)."""
    fields = dataclasses.asdict(cfg)
    for name in ("output_dir", "checkpoint_dir", "keep_checkpoints"):
        fields.pop(name)
    return json.loads(json.dumps(fields))


def _b_dec_init(cfg: SAETrainConfig, x_nd: np.ndarray) -> np.ndarray:
    if cfg.b_dec_init == "geometric_median":
        return geometric_median(x_nd)
    if cfg.b_dec_init == "mean":
        return x_nd.mean(axis=0)
    return np.zeros(x_nd.shape[1], np.float32)


def _initial_state(key, sae_cfg, optimizer, b_dec):
    params = init_params(key, sae_cfg, b_dec)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        steps_since_fired=jnp.zeros((sae_cfg.d_sae,), jnp.int32),
        rng_key=jax.random.key_data(key),
    )


def _summarize(history: list[dict[str, float]], last: int = 5) -> dict[str, float]:
    if not history:
        return {}
    window = history[-last:]
    keys = [k for k in window[0] if k not in ("step", "tokens")]
    return {k: float(np.mean([h[k] for h in window])) for k in keys}


def train_sae(
    activation_batches: ActivationSource,
    cfg: SAETrainConfig,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train an SAE on ``activation_batches``, resuming from the latest checkpoint in
    ``cfg.checkpoint_dir`` if there is one.

    Stops after ``cfg.steps`` steps or when the source runs out. Writes the SAE (SAELens
    format) and ``metrics.json`` to ``cfg.output_dir`` when set.
    """
    start_time = time.time()
    checkpointer = (
        TrainCheckpointer(cfg.checkpoint_dir, cfg.keep_checkpoints) if cfg.checkpoint_dir else None
    )
    try:
        return _train(activation_batches, cfg, checkpointer, progress, start_time)
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _train(activation_batches, cfg, checkpointer, progress, start_time) -> TrainResult:
    optimizer = optax.adam(lr_schedule(cfg), b1=cfg.adam_beta1, b2=cfg.adam_beta2)
    key = jax.random.key(cfg.seed)
    resume_step = checkpointer.latest_step() if checkpointer else None

    if resume_step is not None:
        meta = checkpointer.restore_meta(resume_step)
        if meta["train_config"] != _resume_key(cfg):
            raise ValueError(
                f"{cfg.checkpoint_dir} contains a checkpoint of a different configuration; "
                "use a new checkpoint_dir or the original configuration"
            )
        d_in, norm_factor, history = meta["d_in"], meta["norm_factor"], meta["history"]
        position = meta["buffer"]
        sae_cfg = _sae_config(cfg, d_in)
        abstract = jax.eval_shape(
            lambda: _initial_state(key, sae_cfg, optimizer, np.zeros(d_in, np.float32))
        )
        state, rows = checkpointer.restore_arrays(resume_step, abstract, meta["buffer_rows"], d_in)
        source = _open_source(activation_batches, position["batches_read"])
        buffer = ActivationBuffer(
            source,
            capacity=cfg.shuffle_buffer_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            d_in=d_in,
        )
        buffer.restore(rows, position)
        logger.info("resumed SAE training from step %d (%s)", resume_step, cfg.checkpoint_dir)
        first_batch = None
    else:
        source = _open_source(activation_batches, 0)
        buffer = ActivationBuffer(
            source,
            capacity=cfg.shuffle_buffer_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            d_in=cfg.d_in,
        )
        first_batch = buffer.next_batch()
        d_in = buffer.d_in
        norm_factor = 1.0
        if cfg.normalize_activations == "expected_average_only_in":
            norm_factor = math.sqrt(d_in) / float(np.linalg.norm(first_batch, axis=1).mean())
        sae_cfg = _sae_config(cfg, d_in)
        state = _initial_state(key, sae_cfg, optimizer, _b_dec_init(cfg, first_batch * norm_factor))
        history = []
        logger.info(
            "starting SAE training: %s, d_in=%d, input scale %.4g",
            cfg.architecture,
            d_in,
            norm_factor,
        )

    settings = StepSettings(
        aux_k=min(cfg.aux_k or max(d_in // 2, 1), cfg.d_sae),
        aux_k_coef=cfg.aux_k_coef,
        dead_feature_window=cfg.dead_feature_window,
        threshold_lr=cfg.batchtopk_threshold_lr,
    )
    step_fn = make_step_fn(sae_cfg, optimizer, settings)

    def checkpoint(step: int) -> None:
        meta = {
            "train_config": _resume_key(cfg),
            "d_in": d_in,
            "norm_factor": norm_factor,
            "history": history,
            "buffer_rows": len(buffer.rows),
        }
        checkpointer.save(step, state, buffer, meta)

    step = start_step = int(state.step)
    bar = tqdm(
        total=cfg.steps * cfg.batch_size,
        initial=step * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc="SAE training",
    )
    pending: list[dict[str, jax.Array]] = []
    stopped_early = False
    while step < cfg.steps:
        if first_batch is not None:
            batch, first_batch = first_batch, None
        else:
            try:
                batch = buffer.next_batch()
            except StopIteration:
                stopped_early = True
                logger.warning("activation source ran out at step %d of %d", step, cfg.steps)
                break
        state, metrics = step_fn(state, jnp.asarray(batch * norm_factor))
        step += 1
        pending.append(metrics)
        bar.update(cfg.batch_size)
        if step % cfg.log_every == 0 or step == cfg.steps:
            means = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
            history.append({"step": step, "tokens": step * cfg.batch_size, **means})
            pending = []
            bar.set_postfix(
                l0=f"{means['l0']:.1f}",
                fvu=f"{means['fvu']:.3f}",
                dead=f"{means['dead_fraction']:.2f}",
            )
        if checkpointer is not None and step % cfg.checkpoint_every == 0:
            checkpoint(step)
    bar.close()
    if checkpointer is not None and step % cfg.checkpoint_every != 0:
        checkpoint(step)

    elapsed = time.time() - start_time
    raw_cfg = sae_cfg.replace(
        normalize_activations=cfg.normalize_activations, norm_scaling_factor=norm_factor
    )
    params, final_cfg = fold_norm_scaling_factor(jax.device_get(state.params), raw_cfg)
    metrics = {
        "final": _summarize(history),
        "steps": step,
        "tokens": step * cfg.batch_size,
        "stopped_early": stopped_early,
        "norm_scaling_factor": norm_factor,
        "elapsed_s_this_run": elapsed,
        "tokens_per_s_this_run": (step - start_step) * cfg.batch_size / max(elapsed, 1e-9),
        "source_batches_read": buffer.batches_read,
        "train_config": dataclasses.asdict(cfg),
        "history": history,
    }
    logger.info("finished SAE training at step %d: %s", step, metrics["final"])
    if cfg.output_dir:
        save_saelens(params, final_cfg, cfg.output_dir, metrics=metrics)
    return TrainResult(params, final_cfg, metrics)


def train_sae_from_config(
    config: str | Path | Mapping[str, Any],
    activation_batches: ActivationSource,
    *,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Load the ``train`` section of a YAML config (plus ``overrides``) and train."""
    cfg = load_train_config(config, **overrides)
    return train_sae(activation_batches, cfg, progress=progress)
