"""Causal validation: keep the candidate features whose amplification helps the task.

For each candidate feature ``i``, the model runs on held-out task (dev) examples with the
feature edited at the SAE's hook on every real token:

- ``amplify``: ``h + (alpha - 1) * f_i(h) * W_dec[i]`` (the SAE's input scale applies, see
  ``sae.interventions``);
- ``steer``: ``h + c * W_dec[i]``.

Metrics (``delta`` is the improvement, so positive is better for both):

- ``loss`` (default): mean cross-entropy over all response tokens of the dev set (every
  response token weighs the same); ``delta = loss(base) - loss(edited)``.
- ``accuracy``: fraction of dev examples whose greedy answer to the prompt matches the
  reference response (math exact match, ``train.metrics.exact_match``);
  ``delta = accuracy(edited) - accuracy(base)``.

A feature is kept when ``delta > min_delta``.

Batching: one compiled call evaluates many (candidate, example) pairs. A dev batch of ``R``
rows is repeated for ``G`` candidates, and ``sae.make_feature_intervention`` reads a
per-row feature id and strength, so row ``g * R + r`` is example ``r`` with candidate ``g``
edited. The unedited base run is entry 0 of the same call: amplifying by 1 or steering by 0
leaves the activation unchanged. The loss needs logits, so every layer runs. When the SAE
reads the residual stream (``hook_resid_post`` or ``hook_resid_pre``), the blocks before
the hook are the same for every candidate, so they run once per dev batch and only the
rest of the model runs per candidate (``models.transformer.forward_from``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from igds_jax.method_batches import make_batches
from models.hooks import parse_hook_name
from models.transformer import forward, forward_from, graphdef_config, token_losses
from sae import SAEConfig, SAEParams, feature_edit, make_feature_intervention
from train.tokenize import Batch, EncodedExample

logger = logging.getLogger(__name__)

# Strength that leaves the activation unchanged, per mode.
IDENTITY = {"amplify": 1.0, "steer": 0.0}


@dataclass(frozen=True)
class CausalResult:
    """Every candidate's metric under its edit, and which candidates were kept."""

    feature_ids: np.ndarray  # [C] int64
    metric: str  # "loss" or "accuracy"
    base_value: float  # metric without any edit
    values_c: np.ndarray  # [C] metric with candidate c edited
    deltas_c: np.ndarray  # [C] improvement over the base, positive is better
    kept_c: np.ndarray  # [C] bool, delta > min_delta
    num_dev_examples: int
    num_scored_tokens: int  # response tokens (loss) or generated tokens (accuracy)

    @property
    def kept_ids(self) -> np.ndarray:
        return self.feature_ids[self.kept_c]


_INTERVENTIONS: dict[tuple[SAEConfig, str], Callable] = {}


def feature_intervention(sae_cfg: SAEConfig, mode: str) -> Callable:
    """Return the batched edit function for ``mode``, one object per (SAE config, mode).

    Reusing the same function object lets jit reuse its compiled code.
    """
    key = (sae_cfg, mode)
    if key not in _INTERVENTIONS:
        _INTERVENTIONS[key] = make_feature_intervention(sae_cfg, mode)
    return _INTERVENTIONS[key]


def edit_strength(mode: str, alpha: float, steer_coef: float) -> float:
    """Return the per-row edit value: alpha when amplifying, c when steering."""
    if mode not in IDENTITY:
        raise ValueError(f"causal mode {mode!r} is not supported; use 'amplify' or 'steer'")
    return alpha if mode == "amplify" else steer_coef


def _tile(x: jax.Array, times: int) -> jax.Array:
    """Repeat a batch ``times`` times along its first axis (entry-major rows)."""
    return jnp.tile(x, (times,) + (1,) * (x.ndim - 1))


def _response_loss_sum_rows(logits_btv, tokens_bt, response_mask_bt) -> jax.Array:
    """Return each row's summed cross-entropy over its response tokens, ``[B]``."""
    loss_bt = token_losses(logits_btv, tokens_bt)
    return jnp.sum(jnp.where(response_mask_bt, loss_bt, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "intervention", "hook_name", "times"))
def _response_loss_sums(
    graphdef,
    state,
    tokens_bt,
    attention_mask_bt,
    response_mask_bt,
    positions_bt,
    edit,
    *,
    intervention,
    hook_name,
    times,
):
    tokens_bt = _tile(tokens_bt, times)
    logits_btv, _ = forward(
        graphdef,
        state,
        tokens_bt,
        _tile(attention_mask_bt, times),
        interventions={hook_name: intervention},
        intervention_params={hook_name: edit},
        positions_bt=_tile(positions_bt, times),
    )
    return _response_loss_sum_rows(logits_btv, tokens_bt, _tile(response_mask_bt, times))


def residual_split(hook_name: str, n_layers: int) -> tuple[str, int] | None:
    """Return where a forward pass can be cut for edits at ``hook_name``.

    Returns ``(prefix_hook, start_layer)``: the residual that ``prefix_hook`` captures is
    the stream the edit applies to, and the rest of the model runs from ``start_layer``.
    None for hooks inside a block (attention or MLP outputs).
    """
    layer, kind = parse_hook_name(hook_name, n_layers)
    if kind == "hook_resid_post":
        return hook_name, layer + 1
    if kind == "hook_resid_pre":
        return (f"blocks.{layer - 1}.hook_resid_post" if layer else "hook_embed"), layer
    return None


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix_hook", "start_layer"))
def _prefix_residual(
    graphdef, state, tokens_bt, attention_mask_bt, positions_bt, *, prefix_hook, start_layer
):
    _, captured = forward(
        graphdef,
        state,
        tokens_bt,
        attention_mask_bt,
        capture=(prefix_hook,),
        stop_at_layer=start_layer,
        positions_bt=positions_bt,
    )
    return captured[prefix_hook]


@functools.partial(jax.jit, static_argnames=("graphdef", "intervention", "start_layer", "times"))
def _suffix_loss_sums(
    graphdef,
    state,
    resid_btd,
    tokens_bt,
    attention_mask_bt,
    response_mask_bt,
    positions_bt,
    edit,
    *,
    intervention,
    start_layer,
    times,
):
    tokens_bt, attention_mask_bt = _tile(tokens_bt, times), _tile(attention_mask_bt, times)
    x_btd = intervention(_tile(resid_btd, times), attention_mask_bt, edit)
    logits_btv, _ = forward_from(
        graphdef,
        state,
        x_btd,
        start_layer,
        attention_mask_bt,
        positions_bt=_tile(positions_bt, times),
    )
    return _response_loss_sum_rows(logits_btv, tokens_bt, _tile(response_mask_bt, times))


def entry_groups(num_entries: int, group_size: int) -> list[tuple[np.ndarray, int]]:
    """Cut entry indices into groups of exactly ``group_size`` for fixed-shape calls.

    Returns ``(indices, num_valid)`` pairs; the last group is padded by repeating entry 0,
    and only its first ``num_valid`` slots are results.
    """
    groups = []
    for start in range(0, num_entries, group_size):
        chunk = np.arange(start, min(start + group_size, num_entries))
        groups.append((np.pad(chunk, (0, group_size - len(chunk))), len(chunk)))
    return groups


def candidate_losses(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    feature_ids: Sequence[int],
    dev_examples: Sequence[EncodedExample],
    *,
    hook_name: str,
    mode: str = "amplify",
    value: float = 4.0,
    tokens_per_call: int = 16384,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
) -> tuple[float, np.ndarray, int]:
    """Return ``(base_loss, losses_c, num_tokens)``: mean response-token cross-entropy on
    the dev set without an edit and with each feature edited by ``value``."""
    # entries: the unedited base run first, then one per candidate
    ids = np.asarray(feature_ids, np.int64)
    entry_ids = np.concatenate([[0], ids])
    entry_values = np.concatenate([[IDENTITY[mode]], np.full(len(ids), value)])
    intervention = feature_intervention(sae_cfg, mode)

    # dev batches; pad_rows=False: a bucket's last batch keeps its real row count instead of padding
    # rows, which would otherwise be repeated once per candidate.
    batches = make_batches(
        dev_examples,
        tokens_per_batch=tokens_per_call,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
        pad_rows=False,
    )
    plan = [(b, entry_groups(len(entry_ids), _group_size(b, tokens_per_call))) for b in batches]
    split = residual_split(hook_name, graphdef_config(graphdef, state).n_layers)

    # one call per (dev batch, group of entries), rows laid out entry-major
    sums = np.zeros(len(entry_ids), np.float64)
    with tqdm(total=sum(len(g) for _, g in plan), desc="causal", unit="call", leave=False) as bar:
        for batch, groups in plan:
            rows = batch.tokens_bt.shape[0]
            if split is not None:
                resid_btd = _prefix_residual(
                    graphdef,
                    state,
                    batch.tokens_bt,
                    batch.attention_mask_bt,
                    batch.positions_bt,
                    prefix_hook=split[0],
                    start_layer=split[1],
                )
            for group, num_valid in groups:
                edit = feature_edit(
                    sae, np.repeat(entry_ids[group], rows), np.repeat(entry_values[group], rows)
                )
                if split is not None:
                    row_sums = _suffix_loss_sums(
                        graphdef,
                        state,
                        resid_btd,
                        batch.tokens_bt,
                        batch.attention_mask_bt,
                        batch.response_mask_bt,
                        batch.positions_bt,
                        edit,
                        intervention=intervention,
                        start_layer=split[1],
                        times=len(group),
                    )
                else:
                    row_sums = _response_loss_sums(
                        graphdef,
                        state,
                        batch.tokens_bt,
                        batch.attention_mask_bt,
                        batch.response_mask_bt,
                        batch.positions_bt,
                        edit,
                        intervention=intervention,
                        hook_name=hook_name,
                        times=len(group),
                    )
                per_entry = np.asarray(row_sums, np.float64).reshape(len(group), rows).sum(1)
                sums[group[:num_valid]] += per_entry[:num_valid]
                bar.update(1)

    num_tokens = int(sum(int(e.response_mask.sum()) for e in dev_examples))
    if num_tokens == 0:
        raise ValueError("the dev examples have no response tokens to score")
    means = sums / num_tokens
    return float(means[0]), means[1:], num_tokens


def _group_size(batch: Batch, tokens_per_call: int) -> int:
    rows, length = batch.tokens_bt.shape
    return max(1, (tokens_per_call // length) // rows)


def causal_validate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    sae: SAEParams,
    sae_cfg: SAEConfig,
    feature_ids: Sequence[int],
    dev_examples: Sequence[EncodedExample],
    *,
    hook_name: str,
    mode: str = "amplify",
    alpha: float = 4.0,
    steer_coef: float = 4.0,
    metric: str = "loss",
    min_delta: float = 0.0,
    tokens_per_call: int = 16384,
    max_tokens: int = 1024,
    bucket_multiple: int = 64,
    pad_id: int = 0,
    references: Sequence[str] | None = None,
    decode: Callable[[np.ndarray], str] | None = None,
    max_new_tokens: int = 256,
) -> CausalResult:
    """Measure every candidate's effect on the dev metric and keep the helpful ones.

    ``metric="accuracy"`` needs ``references`` (one reference response per dev example)
    and ``decode`` (token ids to text). The prompts are the tokens of each dev example
    before its response.
    """
    value = edit_strength(mode, alpha, steer_coef)
    ids = np.asarray(feature_ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= sae_cfg.d_sae):
        raise ValueError(f"feature ids must be in 0..{sae_cfg.d_sae - 1}, got {ids.tolist()}")
    if not dev_examples:
        raise ValueError("causal validation needs at least one dev example")
    common = dict(
        hook_name=hook_name,
        mode=mode,
        value=value,
        tokens_per_call=tokens_per_call,
        max_tokens=max_tokens,
        bucket_multiple=bucket_multiple,
        pad_id=pad_id,
    )
    if metric == "loss":
        base, values, num_tokens = candidate_losses(
            graphdef, state, sae, sae_cfg, ids, dev_examples, **common
        )
        deltas = base - values
    elif metric == "accuracy":
        if references is None or decode is None:
            raise ValueError("metric='accuracy' needs references and decode")
        from igds_jax.causal_accuracy import candidate_accuracies

        base, values, num_tokens = candidate_accuracies(
            graphdef,
            state,
            sae,
            sae_cfg,
            ids,
            [prompt_only(e) for e in dev_examples],
            references,
            decode=decode,
            max_new_tokens=max_new_tokens,
            **common,
        )
        deltas = values - base
    else:
        raise ValueError(f"metric {metric!r} is not supported; use 'loss' or 'accuracy'")
    kept = deltas > min_delta
    logger.info(
        "causal validation (%s, %s): base %.4f; kept %d of %d candidates (min_delta=%g)",
        metric,
        mode,
        base,
        int(kept.sum()),
        len(ids),
        min_delta,
    )
    return CausalResult(ids, metric, base, values, deltas, kept, len(dev_examples), num_tokens)


def prompt_only(example: EncodedExample) -> EncodedExample:
    """Return the prompt part of an encoded example (the generation input)."""
    n = example.num_prompt_tokens
    if n == 0:
        raise ValueError("a dev example has no prompt tokens to generate from")
    return EncodedExample(
        example.input_ids[:n],
        np.zeros(n, bool),
        example.token_mask[:n],
        n,
        example.truncated,
    )
