"""Which family module handles which HF ``model_type``."""

from __future__ import annotations

import importlib
from types import ModuleType

# model_type -> module under models/ with config_from_hf(...) and key_table(...).
FAMILIES = {
    "llama": "models.llama",
    "qwen3": "models.qwen3",
    "gemma2": "models.gemma2",
    "gemma3": "models.gemma3",
    "gemma3_text": "models.gemma3",
    "gpt2": "models.gpt2",
}


class UnknownArchitectureError(ValueError):
    """A model_type (or GGUF architecture) with no port."""


def family_module(model_type: str | None, source: str) -> ModuleType:
    if model_type not in FAMILIES:
        raise UnknownArchitectureError(
            f"{source}: model_type={model_type!r} is not supported; supported: "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return importlib.import_module(FAMILIES[model_type])
