"""Settings of ``igds demo``: data sizes, the SAE to train (or reuse), the method, the report.

One YAML file (``configs/demo_math.yaml``, ``configs/demo_translation.yaml``) fills
:class:`DemoConfig`; ``--set section.field=value`` overrides single fields, as for every
other ``igds`` command. The ``method`` section is a full
:class:`igds_jax.method_config.MethodConfig`. The demo fills in its ``run_dir``, model, SAE
and data paths, so those fields are ignored when set there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from igds_jax.method_config import MethodConfig

TASKS = ("math", "translation")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_math.yaml"


@dataclass
class DemoDataSection:
    task: str = "math"  # math (GSM worked answers) | translation (English -> data.language)
    language: str = "fra"  # target language of the translation task (a package folder name)
    seed: int = 0  # template split, variant streams and pool order
    fractions: tuple[float, ...] = (0.6, 0.2, 0.2)  # template shares of source, dev and test
    task_variants: int = 2  # task records per source template (feature identification)
    dev_variants: int = 1  # records per dev template (causal validation)
    test_variants: int = 2  # records per test template (held out for evaluation)
    pool_math: int = 100  # math records in the pool, from source templates only
    pool_other: int = 200  # non-math records in the pool (sae-probes tasks, Shakespeare)
    reference: int = 100  # non-math records for contrastive recall; 0 turns contrast off


@dataclass
class DemoSAESection:
    config: str = "configs/sae_demo.yaml"  # `igds sae train` config of the SAE to train
    overrides: tuple[str, ...] = ()  # key=value overrides of that config (as its --set)
    path: str | None = None  # an existing SAE directory to use instead of training one
    cache_dir: str | None = None  # where trained SAEs are kept; None: <cache>/demo-sae


@dataclass
class DemoReportSection:
    top_examples: int = 3  # top-activating pool examples shown per kept feature
    context_tokens: int = 12  # tokens shown on each side of the peak token in a snippet
    max_features: int = 12  # kept features given example snippets (highest delta first)


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"  # run directory: data, features, scores, selections, report
    cache_dir: str | None = None  # assets and trained SAEs; None: $IGDS_CACHE or ~/.cache
    model: str | None = None  # HF directory or .gguf; None: the packaged SmolLM2 GGUF
    data: DemoDataSection = field(default_factory=DemoDataSection)  # records and sizes
    sae: DemoSAESection = field(default_factory=DemoSAESection)  # the SAE (trained, cached)
    method: MethodConfig = field(default_factory=MethodConfig)  # recall, causal, FRS, baselines
    report: DemoReportSection = field(default_factory=DemoReportSection)  # extra report parts


def validate_demo(cfg: DemoConfig) -> None:
    """Raise ValueError naming every invalid demo-specific value (method fields are checked
    by the method's own validation)."""
    problems = []
    data = cfg.data
    if data.task not in TASKS:
        problems.append(f"data.task={data.task!r} (expected one of {', '.join(TASKS)})")
    for name in ("task_variants", "dev_variants", "test_variants"):
        if getattr(data, name) < 1:
            problems.append(f"data.{name}={getattr(data, name)} (must be >= 1)")
    for name in ("pool_math", "pool_other", "reference"):
        if getattr(data, name) < 0:
            problems.append(f"data.{name}={getattr(data, name)} (must be >= 0)")
    if data.pool_math + data.pool_other < 2:
        problems.append("data.pool_math + data.pool_other must be >= 2 to select from")
    if len(data.fractions) != 3:
        problems.append(f"data.fractions={list(data.fractions)} (three shares: source, dev, test)")
    if cfg.report.top_examples < 0 or cfg.report.context_tokens < 1:
        problems.append("report.top_examples must be >= 0 and report.context_tokens >= 1")
    if problems:
        raise ValueError("invalid demo config: " + "; ".join(problems))
