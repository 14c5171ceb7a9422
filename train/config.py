"""Settings of a fine-tuning run, its evaluation and a method comparison.

One YAML file fills :class:`FinetuneConfig` (see ``configs/finetune_tiny.yaml``); ``igds
finetune``, ``igds evaluate`` and ``igds compare`` all read it, each using the sections it
needs. ``--set section.field=value`` overrides any field from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16")
PARAM_SHARDING = ("replicated", "model")
METRICS = ("math", "rouge", "bleu", "chrf")
DEFAULT_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass
class DataConfig:
    """Sources of the (prompt, response) records and how they are batched."""

    train: str = ""  # training records (JSONL, JSON, CSV, Parquet or a saved dataset)
    eval: str | None = None  # held-out records for the mean response-token loss
    test: str | None = None  # records to answer by greedy generation and score
    prompt_field: str = "prompt"  # input field with the user message
    response_field: str = "response"  # input field with the target answer
    id_field: str | None = "id"  # input field with a stable id; None generates ids
    max_tokens: int = 512  # prompt + response are truncated to this many tokens
    use_chat_template: bool | None = None  # None: use the tokenizer's template if it has one
    system_prompt: str | None = None  # optional system turn (chat template only)
    tokens_per_batch: int = 4096  # padded tokens per micro-batch; rows = this // bucket length
    bucket_multiple: int = 64  # padded lengths are multiples of this, so few shapes compile
    max_examples: int | None = None  # keep only the first N training records (smoke tests)


@dataclass
class OptimConfig:
    """AdamW with warmup, decay and gradient clipping (Optax)."""

    learning_rate: float = 2e-5  # peak learning rate, reached after warmup
    schedule: str = "cosine"  # decay after warmup: cosine | linear | constant
    warmup_steps: int = 0  # linear warmup from 0; used when warmup_ratio is 0
    warmup_ratio: float = 0.0  # warmup as a fraction of all steps; overrides warmup_steps
    min_lr_ratio: float = 0.0  # final learning rate as a fraction of the peak
    weight_decay: float = 0.0  # decoupled decay on matrices only (not norms or biases)
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.999  # Adam second-moment decay
    eps: float = 1e-8  # Adam denominator epsilon
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm; None disables
    grad_accum_steps: int = 1  # micro-batches summed into one optimizer step


@dataclass
class LoraConfig:
    """Low-rank adapters ``W + (alpha / rank) * A @ B`` on chosen linear layers."""

    enabled: bool = False  # train adapters only; the base weights stay frozen
    rank: int = 8  # inner width r of A [in, r] and B [r, out]
    alpha: float = 16.0  # the update is scaled by alpha / rank
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS  # linear layer names to adapt
    init_std: float | None = None  # std of A's normal init; None means 1 / sqrt(in)


@dataclass
class LoopConfig:
    """Length of the run, precision, logging, checkpoints and device layout."""

    epochs: float = 1.0  # passes over the training set (fractions allowed)
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    param_dtype: str = "float32"  # dtype of the trained (master) weights and Adam moments
    compute_dtype: str = "float32"  # dtype weights are cast to for the forward and backward
    log_every: int = 10  # steps between log lines and metrics.jsonl rows
    eval_every: int | None = None  # steps between held-out loss evaluations; None: at end only
    save_every: int = 100  # steps between checkpoints (one is also saved at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    resume: bool = True  # continue from the newest checkpoint in out_dir when there is one
    mesh_data: int = -1  # 'data' axis size; -1: all devices / mesh_model, else the first ones
    mesh_model: int = 1  # devices on the 'model' axis
    param_sharding: str = "replicated"  # replicated | model (models.sharding's split rules)
    progress: bool = True  # show a tqdm progress bar


@dataclass
class EvalConfig:
    """Generation-based evaluation and held-out loss."""

    metrics: tuple[str, ...] = ("math",)  # any of math | rouge | bleu | chrf
    max_new_tokens: int = 256  # generation budget per test prompt
    batch_size: int = 16  # prompts generated together
    max_prompt_tokens: int = 512  # longer prompts keep their last tokens
    max_examples: int | None = None  # score only the first N test records
    at_end: bool = True  # finetune evaluates the test set after training when it is set


@dataclass
class ExportConfig:
    """The HF-format copy of the trained model written at the end of finetune."""

    enabled: bool = True  # write out_dir/model (config.json + model.safetensors)
    dtype: str = "float32"  # float32 | bfloat16 tensors in model.safetensors


@dataclass
class CompareConfig:
    """Fine-tune on the full pool and on each selection, then score all on one test set."""

    selections: dict[str, str] = field(default_factory=dict)  # method name -> selection file
    full_name: str = "full"  # row name of the run on data.train (the whole pool)
    include_base: bool = True  # also score the model before fine-tuning


@dataclass
class FinetuneConfig:
    """A whole run: model, data, optimizer, adapters, loop, evaluation and export."""

    model: str = ""  # HF model directory or .gguf file to start from
    out_dir: str = "runs/finetune"  # checkpoints, metrics, plots and the exported model
    seed: int = 0  # data order and adapter initialisation
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


def validate(cfg: FinetuneConfig, *, need_train: bool = True) -> None:
    """Raise ValueError listing every invalid field of ``cfg``."""
    problems = []
    if not cfg.model:
        problems.append("model is empty; set it to an HF model directory or a .gguf file")
    if need_train and not cfg.data.train:
        problems.append("data.train is empty; set it to a records file")
    if cfg.optim.schedule not in SCHEDULES:
        problems.append(f"optim.schedule={cfg.optim.schedule!r}; use one of {SCHEDULES}")
    if cfg.optim.grad_accum_steps < 1:
        problems.append(f"optim.grad_accum_steps={cfg.optim.grad_accum_steps}; use 1 or more")
    if not 0.0 <= cfg.optim.warmup_ratio < 1.0:
        problems.append(f"optim.warmup_ratio={cfg.optim.warmup_ratio}; use a value in [0, 1)")
    for name in ("param_dtype", "compute_dtype"):
        value = getattr(cfg.loop, name)
        if value not in DTYPES:
            problems.append(f"loop.{name}={value!r}; use one of {DTYPES}")
    if cfg.export.dtype not in DTYPES:
        problems.append(f"export.dtype={cfg.export.dtype!r}; use one of {DTYPES}")
    if cfg.loop.param_sharding not in PARAM_SHARDING:
        problems.append(f"loop.param_sharding={cfg.loop.param_sharding!r}; use {PARAM_SHARDING}")
    if cfg.loop.max_steps is None and cfg.loop.epochs <= 0:
        problems.append(f"loop.epochs={cfg.loop.epochs}; use a positive number or set max_steps")
    if cfg.lora.enabled and cfg.lora.rank < 1:
        problems.append(f"lora.rank={cfg.lora.rank}; use 1 or more")
    bad_metrics = sorted(set(cfg.eval.metrics) - set(METRICS))
    if bad_metrics:
        problems.append(f"eval.metrics has {bad_metrics}; choose from {METRICS}")
    if problems:
        raise ValueError("invalid fine-tuning config: " + "; ".join(problems))
