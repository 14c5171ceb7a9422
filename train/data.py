"""Records to token ids for training, held-out loss and generation prompts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from train.config import DataConfig
from train.record_files import load_records
from train.records import FieldNames, Record
from train.tokenize import (
    EncodedExample,
    encode_records,
    split_prompt_response,
    truncate_split,
)

logger = logging.getLogger(__name__)


def field_names(data: DataConfig) -> FieldNames:
    return FieldNames(prompt=data.prompt_field, response=data.response_field, id=data.id_field)


def read_records(path: str, data: DataConfig, limit: int | None = None) -> list[Record]:
    """Load valid records from ``path`` (bad rows are skipped and reported in the log)."""
    records, _ = load_records(path, fields=field_names(data))
    if limit is not None:
        records = records[:limit]
    return records


def split_kwargs(data: DataConfig) -> dict[str, Any]:
    return {"use_chat_template": data.use_chat_template, "system_prompt": data.system_prompt}


def encode(tokenizer: Any, records: Sequence[Record], data: DataConfig) -> list[EncodedExample]:
    """Token ids and response masks of each record, truncated to ``data.max_tokens``."""
    examples, _ = encode_records(
        tokenizer, records, max_tokens=data.max_tokens, **split_kwargs(data)
    )
    return examples


def encode_prompts(
    tokenizer: Any, records: Sequence[Record], data: DataConfig, max_prompt_tokens: int
) -> list[list[int]]:
    """The prompt ids a model must continue: everything before the response.

    They are the prompt part of the training encoding (the chat template's generation
    prompt included). Longer prompts keep their last ``max_prompt_tokens`` tokens, and a
    leading BOS is kept.
    """
    prompts = []
    for record in records:
        prompt_ids, _ = split_prompt_response(
            tokenizer, record.prompt, record.response, **split_kwargs(data)
        )
        if len(prompt_ids) > max_prompt_tokens:
            prompt_ids, _ = truncate_split(
                prompt_ids, [], max_prompt_tokens, tokenizer.bos_token_id
            )
        prompts.append(prompt_ids)
    return prompts


def pad_id(tokenizer: Any, fallback: int | None) -> int:
    """Return the tokenizer's pad id, else the model's, else 0 (padding is always masked)."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(fallback or 0)
