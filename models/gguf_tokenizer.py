"""The tokenizer embedded in a GGUF file, as a transformers fast tokenizer, without PyTorch.

``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` reads the file's metadata with a
reader that imports torch, which is only a test dependency here. This module reads the
same metadata with the ``gguf`` package and hands it to transformers' GGUF tokenizer
converter, so the demo runs with the main dependencies alone. The result matches
``AutoTokenizer`` on the same file (checked on SmolLM2 in the tests).

Metadata conventions follow transformers' reader: numbers and strings as values, numeric
arrays as lists, and string arrays as their length, except the vocabulary and the merge
table, which are read in full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# String arrays that the converter needs in full.
_FULL_STRING_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
# Special token attribute -> GGUF metadata key of its id.
_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def _value(field: Any, key: str) -> Any:
    """Convert one metadata field to a plain Python value (see the module docstring)."""
    import gguf

    types = field.types
    if types[0] != gguf.GGUFValueType.ARRAY:
        value = field.contents()
        return value.item() if isinstance(value, np.generic) else value
    if types[-1] == gguf.GGUFValueType.STRING:
        return field.contents() if key in _FULL_STRING_ARRAYS else len(field.data)
    return [v.item() if isinstance(v, np.generic) else v for v in field.contents()]


def tokenizer_metadata(reader: Any) -> dict[str, Any]:
    """Return the ``general.architecture`` and ``tokenizer.*`` metadata of an open GGUFReader."""
    return {
        key: _value(field, key)
        for key, field in reader.fields.items()
        if key == "general.architecture" or key.startswith("tokenizer.")
    }


def tokenizer_from_metadata(metadata: dict[str, Any]) -> Any:
    """Build the fast tokenizer that ``metadata`` (from ``tokenizer_metadata``) describes."""
    import transformers
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError as err:
        raise ImportError(
            f"transformers {transformers.__version__} has no GGUF tokenizer converter at "
            "transformers.integrations.gguf.gguf_tokenizer_mapping ({err}); install the "
            "version this project is tested with: pip install 'transformers==5.25.*'"
        ) from err

    if "tokenizer.ggml.tokens" not in metadata:
        raise ValueError("the GGUF file has no tokenizer (no tokenizer.ggml.tokens metadata)")
    parts = {
        part: {
            name: metadata[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
        for part, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, config = parts["tokenizer"], parts["tokenizer_config"]
    if vocab.get("tokenizer_type") == "llama":
        # A sentencepiece vocabulary without the flag gets a BOS token, as transformers does.
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_IDS.items():
        token_id = metadata.get(key)
        config[name] = vocab["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], vocab)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def gguf_tokenizer(path: str | Path, reader: Any = None) -> Any:
    """Build the tokenizer embedded in the GGUF file at ``path`` (``reader``: its GGUFReader)."""
    if reader is None:
        import gguf

        reader = gguf.GGUFReader(str(path))
    return tokenizer_from_metadata(tokenizer_metadata(reader))
