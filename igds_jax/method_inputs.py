"""Inputs of an IGDS run: the model, the SAE, the datasets and the dev split.

``load_assets`` loads the SAE first and checks its width against the model's ``d_model``
(from ``config.json`` before any weight is read, for an HF directory) and its hook against
the model's layers, so a mismatched pair fails before any heavy work.

Dev split (``split_dev``): task examples are grouped by ``group_field``, and each example
is its own group when it is None. Groups are ordered by a seeded hash of the group key,
and the first ``round(dev_fraction * groups)`` groups form the dev set (at least 1, and at
least one group is left for recall). The split depends only on the keys and the seed, not
on file order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from igds_jax.baselines.random import random_score
from igds_jax.method_batches import pad_id_of
from igds_jax.method_config import DataSection, MethodConfig
from models.config import ModelConfig
from models.hooks import parse_hook_name
from sae import SAEConfig, SAEParams, check_hook_dim, load_sae
from train.record_files import load_records
from train.records import FieldNames, LoadReport, Record
from train.tokenize import EncodedExample, TokenizeReport, encode_records

logger = logging.getLogger(__name__)


@dataclass
class Assets:
    """The loaded model and SAE, with the hook the SAE reads."""

    graphdef: nnx.GraphDef
    state: nnx.State
    model_cfg: ModelConfig
    tokenizer: Any
    sae: SAEParams
    sae_cfg: SAEConfig
    hook_name: str
    pad_id: int


def peek_hf_model_config(path: Path) -> ModelConfig | None:
    """Return the ModelConfig of an HF model directory without reading weights, else None."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    from models.registry import family_module

    hf_config = json.loads(config_file.read_text())
    family = family_module(hf_config.get("model_type"), str(config_file))
    return family.config_from_hf(hf_config, str(config_file))


def check_sae_fits(sae_cfg: SAEConfig, hook_name: str, model_cfg: ModelConfig) -> None:
    """Raise ValueError unless the hook exists in the model and has the SAE's width."""
    parse_hook_name(hook_name, model_cfg.n_layers)
    check_hook_dim(sae_cfg, model_cfg.d_model)


def load_assets(cfg: MethodConfig) -> Assets:
    """Load the SAE and the model named in ``cfg``, checking that they fit together."""
    if not cfg.sae.path:
        raise ValueError("sae.path is not set; pass the SAE directory (--set sae.path=DIR)")
    if not cfg.model.path:
        raise ValueError("model.path is not set; pass an HF directory or .gguf file")
    sae, sae_cfg = load_sae(cfg.sae.path, dtype=cfg.sae.dtype, hook_name=cfg.sae.hook_name)
    hook_name = cfg.sae.hook_name or sae_cfg.hook_name
    if not hook_name:
        raise ValueError(
            f"the SAE at {cfg.sae.path} names no hook point; set sae.hook_name, e.g. "
            "blocks.12.hook_resid_post"
        )
    model_path = Path(cfg.model.path)
    if model_path.is_dir():
        peeked = peek_hf_model_config(model_path)
        if peeked is not None:
            check_sae_fits(sae_cfg, hook_name, peeked)

    from models.loading import load_model

    model = load_model(model_path, dtype=cfg.model.dtype)
    check_sae_fits(sae_cfg, hook_name, model.config)
    tokenizer = model.tokenizer
    if cfg.model.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    if tokenizer is None:
        raise ValueError(
            f"{cfg.model.path} has no tokenizer; set model.tokenizer to a tokenizer directory"
        )
    logger.info("SAE %s reads %s (d_sae=%d)", cfg.sae.path, hook_name, sae_cfg.d_sae)
    return Assets(
        model.graphdef,
        model.state,
        model.config,
        tokenizer,
        sae,
        sae_cfg,
        hook_name,
        pad_id_of(tokenizer, model.config.pad_token_id),
    )


def field_names(data: DataSection) -> FieldNames:
    return FieldNames(prompt=data.prompt_field, response=data.response_field, id=data.id_field)


def load_dataset(path: str, data: DataSection, role: str) -> tuple[list[Record], LoadReport]:
    """Load one dataset with the config's field names, limits and strictness."""
    if not path:
        raise ValueError(f"data.{role} is not set; pass the {role} file (--set data.{role}=PATH)")
    return load_records(
        path,
        fields=field_names(data),
        format=data.format,  # type: ignore[arg-type]
        max_chars=data.max_chars,
        strict=data.strict,
        auto_id=data.auto_id,  # type: ignore[arg-type]
    )


def encode(
    tokenizer: Any, records: Sequence[Record], data: DataSection
) -> tuple[list[EncodedExample], TokenizeReport]:
    """Tokenize records with the config's template, separator and truncation."""
    return encode_records(
        tokenizer,
        records,
        max_tokens=data.max_tokens,
        use_chat_template=data.use_chat_template,
        system_prompt=data.system_prompt,
        separator=data.separator,
        append_eos=data.append_eos,
    )


def _group_key(record: Record, group_field: str | None) -> str:
    if group_field is None:
        return record.id
    if group_field not in record.extra:
        raise ValueError(
            f"task example {record.id!r} has no field {group_field!r} (data.group_field); add "
            "it to every task row or set data.group_field to null"
        )
    return json.dumps(record.extra[group_field], sort_keys=True)


def split_dev(
    records: Sequence[Record], fraction: float, seed: int, group_field: str | None = None
) -> tuple[list[Record], list[Record]]:
    """Split task records into (recall set, dev set); rule in the module docstring."""
    keys = [_group_key(r, group_field) for r in records]
    groups = sorted(set(keys), key=lambda k: (random_score(k, seed), k))
    if len(groups) < 2:
        raise ValueError(
            f"cannot hold out a dev set from {len(groups)} task example group(s); add task "
            "examples or pass a separate dev file as data.dev"
        )
    num_dev = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    dev_keys = set(groups[:num_dev])
    train = [r for r, k in zip(records, keys, strict=True) if k not in dev_keys]
    dev = [r for r, k in zip(records, keys, strict=True) if k in dev_keys]
    return train, dev


def cap_examples(records: Sequence[Record], limit: int | None, seed: int) -> list[Record]:
    """Keep at most ``limit`` records, a seeded choice that does not depend on order."""
    if limit is None or len(records) <= limit:
        return list(records)
    ranked = sorted(records, key=lambda r: (random_score(r.id, seed), r.id))
    return ranked[:limit]
