"""Hook points: named places in the forward pass where activations are read or edited.

Names follow TransformerLens/SAELens, so an SAELens ``hook_name`` maps directly:

- ``hook_embed``: token embeddings after any embedding scale (and, for GPT-2, after the
  position embeddings are added), shape ``[batch, seq, d_model]``.
- ``blocks.{L}.hook_resid_pre``: residual stream entering block ``L``.
- ``blocks.{L}.hook_attn_out``: attention output added to the residual in block ``L``
  (after any post-attention norm).
- ``blocks.{L}.hook_mlp_out``: MLP output added to the residual in block ``L`` (after any
  post-feedforward norm).
- ``blocks.{L}.hook_resid_post``: residual stream leaving block ``L``.

An intervention is a pure function ``fn(activation_btd, token_mask_bt) -> activation_btd``
where ``token_mask_bt`` is 1 on real tokens and 0 on padding. An intervention may take a
third argument of dynamic parameters (any pytree), passed through the forward call's
``intervention_params`` under the same hook name; this lets one compiled function serve
many feature ids or strengths. Intervention functions are static arguments to ``jax.jit``:
reuse the same function object to reuse the compiled code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax

Intervention = Callable[..., jax.Array]

_BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(_BLOCK_HOOKS) + r")$")


def parse_hook_name(name: str, n_layers: int) -> tuple[int | None, str]:
    """Split a hook name into ``(layer, kind)``; ``layer`` is None for ``hook_embed``.

    Raises ValueError naming the hook and the valid forms when the name is unknown or its
    layer is out of range.
    """
    if name == "hook_embed":
        return None, "hook_embed"
    m = _HOOK_RE.match(name)
    if m is None:
        raise ValueError(
            f"unknown hook point {name!r}; use 'hook_embed' or 'blocks.{{L}}.<kind>' with "
            f"<kind> one of {', '.join(_BLOCK_HOOKS)}"
        )
    layer = int(m.group(1))
    if not 0 <= layer < n_layers:
        raise ValueError(
            f"hook point {name!r} names layer {layer}, but the model has layers 0..{n_layers - 1}"
        )
    return layer, m.group(2)


def last_layer_needed(names: Any, n_layers: int) -> int:
    """Index of the deepest block any of ``names`` reads or edits (-1 for embed only)."""
    deepest = -1
    for name in names:
        layer, _ = parse_hook_name(name, n_layers)
        if layer is not None:
            deepest = max(deepest, layer)
    return deepest


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook point of a model with ``n_layers`` blocks, in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{kind}" for kind in _BLOCK_HOOKS]
    return names


class HookContext:
    """Collects captures and applies interventions during one traced forward pass."""

    def __init__(
        self,
        capture: frozenset[str],
        interventions: Mapping[str, Intervention],
        intervention_params: Mapping[str, Any],
        token_mask_bt: jax.Array,
    ):
        self.capture = capture
        self.interventions = interventions
        self.intervention_params = intervention_params
        self.token_mask_bt = token_mask_bt
        self.captured: dict[str, jax.Array] = {}

    def __call__(self, name: str, x_btd: jax.Array) -> jax.Array:
        fn = self.interventions.get(name)
        if fn is not None:
            if name in self.intervention_params:
                x_btd = fn(x_btd, self.token_mask_bt, self.intervention_params[name])
            else:
                x_btd = fn(x_btd, self.token_mask_bt)
        if name in self.capture:
            self.captured[name] = x_btd
        return x_btd
