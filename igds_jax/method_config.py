"""Configuration of an IGDS run: every setting of identify -> score -> select and baselines.

One YAML file fills :class:`MethodConfig` (see ``train.config_io``); ``--set
section.field=value`` overrides single fields. Each field carries its default and a one-line
comment; ``describe_fields`` turns those comments into the CLI help, so the comment is the
field's documentation.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field

TOKEN_SETS = ("all", "response")
CAUSAL_MODES = ("amplify", "steer")
CAUSAL_METRICS = ("loss", "accuracy")
CANDIDATE_SOURCES = ("recall", "random")
AGGREGATES = ("sum", "mean", "max")
BASELINES = ("random", "loss", "ifd", "zip")
SELECTION_FORMATS = ("jsonl", "parquet")


@dataclass
class ModelSection:
    path: str = ""  # HF model directory (config.json + *.safetensors) or a .gguf file
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16
    tokenizer: str | None = None  # tokenizer directory when the model source has none


@dataclass
class SAESection:
    path: str = ""  # SAE directory (SAELens cfg.json, Llama Scope) or Gemma Scope params.npz
    hook_name: str | None = None  # hook point to read; None takes the SAE config's hook_name
    dtype: str | None = None  # SAE parameter dtype; None keeps the dtype stored with the SAE


@dataclass
class DataSection:
    task: str = ""  # task examples: recall runs on them, causal validation on a held-out part
    dev: str | None = None  # held-out task examples for causal validation; None splits task
    pool: str = ""  # candidate pool that is scored and from which examples are selected
    reference: str | None = None  # reference corpus for contrastive recall; None: no contrast
    prompt_field: str = "prompt"  # input field that contains the prompt
    response_field: str = "response"  # input field that contains the response
    id_field: str | None = "id"  # input field that contains the example id; None generates ids
    auto_id: str = "content"  # ids for rows without one: content (text hash) | index
    format: str | None = None  # reader: json | jsonl | csv | parquet | hf; None: from suffix
    max_chars: int | None = 100_000  # skip rows whose prompt or response is longer (characters)
    strict: bool = False  # raise on the first bad row instead of skipping and counting it
    dev_fraction: float = 0.2  # share of task examples (or groups) held out as the dev set
    group_field: str | None = None  # rows sharing this field's value stay on one side of the split
    max_tokens: int = 1024  # examples are truncated to this many tokens (prompt tail kept)
    use_chat_template: bool | None = None  # None: use the tokenizer's chat template if it has one
    system_prompt: str | None = None  # system message for the chat template
    separator: str = "\n"  # text between prompt and response without a chat template
    append_eos: bool = True  # end the response with EOS (plain text path only)
    tokens_per_batch: int = 8192  # padded tokens per forward batch (rows = this // length)
    bucket_multiple: int = 64  # padded lengths are multiples of this many tokens


@dataclass
class RecallSection:
    num_candidates: int = 32  # keep the top this many features by firing rate
    min_rate: float | None = None  # instead keep every feature whose rate is above this
    tokens: str = "all"  # task tokens counted: all (prompt + response) | response
    contrast: bool = True  # subtract the reference-corpus rate when data.reference is set


@dataclass
class CausalSection:
    enabled: bool = True  # False keeps every candidate (ablation: recall only)
    candidates: str = "recall"  # recall | random (ablation: validate random features)
    num_random: int | None = None  # random candidates; None draws recall.num_candidates
    mode: str = "amplify"  # amplify: h + (alpha - 1) f_i W_dec[i]; steer: h + c W_dec[i]
    alpha: float = 4.0  # amplification factor of the feature's own contribution
    steer_coef: float = 4.0  # c in steer mode, in units of the hook activation
    metric: str = "loss"  # loss: mean response-token cross-entropy | accuracy: exact match
    min_delta: float = 0.0  # keep features whose metric improves by more than this
    max_dev_examples: int | None = 128  # cap on dev examples (first by id); None uses all
    tokens_per_call: int = 16384  # padded tokens per compiled call (candidates x dev rows)
    max_new_tokens: int = 256  # generation budget per answer in accuracy mode, in tokens


@dataclass
class ScoreSection:
    aggregate: str = "sum"  # per example over tokens of the summed features: sum | mean | max
    tokens: str = "all"  # tokens scored: all (prompt + response) | response


@dataclass
class SelectSection:
    fraction: float | None = 0.5  # keep floor(fraction * pool size) examples
    count: int | None = None  # keep this many examples instead of a fraction
    token_budget: int | None = None  # also stop before the total token count exceeds this
    formats: tuple[str, ...] = ("jsonl", "parquet")  # selection files written: jsonl, parquet
    add_messages: bool = False  # add a chat "messages" field to each selected row


@dataclass
class BaselineSection:
    names: tuple[str, ...] = ()  # baselines `igds run` also computes: random, loss, ifd, zip
    max_ifd: float = 1.0  # IFD: examples above this are ineligible
    zip_k1: int = 10_000  # ZIP global stage size
    zip_k2: int = 200  # ZIP local coarse stage size
    zip_k3: int = 100  # ZIP local fine stage size (examples added per round)


@dataclass
class StabilitySection:
    other_task: str = ""  # second task dataset whose features are compared with data.task
    top_k: int = 32  # compare the top this many features of each dataset (Jaccard)
    use_causal: bool = False  # compare validated features (True) or recall candidates


@dataclass
class MethodConfig:
    run_dir: str = "runs/igds"  # directory all outputs are written to
    seed: int = 0  # seed of the dev split, random candidates and the Random baseline
    model: ModelSection = field(default_factory=ModelSection)  # the base language model
    sae: SAESection = field(default_factory=SAESection)  # the SAE and the hook it reads
    data: DataSection = field(default_factory=DataSection)  # inputs and tokenization
    recall: RecallSection = field(default_factory=RecallSection)  # frequency recall
    causal: CausalSection = field(default_factory=CausalSection)  # causal validation
    score: ScoreSection = field(default_factory=ScoreSection)  # Feature-Resonant Score
    select: SelectSection = field(default_factory=SelectSection)  # selection and its files
    baselines: BaselineSection = field(default_factory=BaselineSection)  # baselines
    stability: StabilitySection = field(default_factory=StabilitySection)  # feature stability


_CHOICES = {
    ("recall", "tokens"): TOKEN_SETS,
    ("causal", "candidates"): CANDIDATE_SOURCES,
    ("causal", "mode"): CAUSAL_MODES,
    ("causal", "metric"): CAUSAL_METRICS,
    ("score", "aggregate"): AGGREGATES,
    ("score", "tokens"): TOKEN_SETS,
    ("data", "auto_id"): ("content", "index"),
}


def validate(cfg: MethodConfig) -> None:
    """Raise ValueError naming every invalid value in ``cfg``."""
    problems = []
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            problems.append(f"{section}.{name}={value!r} (expected one of {', '.join(choices)})")
    bad = [n for n in cfg.baselines.names if n not in BASELINES]
    if bad:
        problems.append(f"baselines.names has {bad} (expected some of {', '.join(BASELINES)})")
    bad = [f for f in cfg.select.formats if f not in SELECTION_FORMATS]
    if bad or not cfg.select.formats:
        problems.append(f"select.formats={list(cfg.select.formats)} (use jsonl and/or parquet)")
    if not 0.0 < cfg.data.dev_fraction < 1.0:
        problems.append(f"data.dev_fraction={cfg.data.dev_fraction} (must be in (0, 1))")
    if cfg.recall.num_candidates < 1:
        problems.append(f"recall.num_candidates={cfg.recall.num_candidates} (must be >= 1)")
    for name in ("tokens_per_batch", "max_tokens", "bucket_multiple"):
        if getattr(cfg.data, name) < 1:
            problems.append(f"data.{name}={getattr(cfg.data, name)} (must be >= 1)")
    if cfg.causal.tokens_per_call < 1:
        problems.append(f"causal.tokens_per_call={cfg.causal.tokens_per_call} (must be >= 1)")
    if cfg.select.fraction is not None and cfg.select.count is not None:
        problems.append("select.fraction and select.count are both set (set one to null)")
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))


_FIELD_RE = re.compile(r"^\s+(\w+):[^#]*#\s*(.+)$")


def field_comments(cls: type) -> dict[str, str]:
    """Return ``{field name: its trailing source comment}`` for a config dataclass."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_RE.match(line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def describe_fields(cls: type = MethodConfig, prefix: str = "") -> list[str]:
    """Return one help line per leaf field: ``section.name (default): comment``."""
    lines = []
    comments = field_comments(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            lines.extend(describe_fields(type(value), f"{prefix}{f.name}."))
            continue
        shown = list(value) if isinstance(value, tuple) else value
        lines.append(f"{prefix}{f.name} (default {shown!r}): {comments.get(f.name, '')}")
    return lines
