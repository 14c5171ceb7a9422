"""Token ids, response masks and length-bucketed batches for (prompt, response) examples.

Encoding (``encode_example``):

- With a chat template (the tokenizer has one and ``use_chat_template`` is not False), the
  conversation is ``[user: prompt, assistant: response]`` (after an optional system turn).
  The prompt part is the template rendered with ``add_generation_prompt=True`` on the
  conversation without the assistant turn. The full conversation must start with exactly
  those token ids, or ``encode_example`` raises. The response mask is every token after
  that prefix, so it includes the end-of-turn tokens the template appends, because the
  model must learn to stop.
- Without a chat template, the ids are ``[BOS] + ids(prompt + separator) + ids(response) +
  [EOS]``: BOS only when the tokenizer adds one itself, EOS when ``append_eos``. The prompt
  and response are tokenized separately, so the boundary never depends on a merge across
  it. The response mask covers ``ids(response) + [EOS]``.

``token_mask`` is True on every token except a BOS at position 0 (its activations are
outliers, so feature statistics leave it out).

Truncation to ``max_tokens``: the response keeps its head and the prompt keeps its tail, and
the prompt keeps at least ``min(len(prompt), max_tokens // 2)`` tokens. A BOS at the start of
the prompt is always kept. See ``truncate_split``.

Batching (``pack_batches``): examples are bucketed by length into a small fixed set of padded
lengths and each bucket is cut into batches of ``tokens_per_batch // length`` rows, so the
compiled forward sees at most one shape per bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example with its masks; all arrays have shape ``[T]``."""

    input_ids: np.ndarray  # int32
    response_mask: np.ndarray  # bool, True on response tokens
    token_mask: np.ndarray  # bool, False only on a leading BOS
    num_prompt_tokens: int
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class TokenizeReport:
    """Counts of truncation over a set of encoded examples."""

    num_examples: int = 0
    num_truncated: int = 0
    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def adds_bos(tokenizer: Any) -> bool:
    """Return whether the tokenizer puts its BOS token first when encoding plain text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def split_prompt_response(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    separator: str = "\n",
    append_eos: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[int], list[int]]:
    """Tokenize one example into (prompt ids, response ids), untruncated.

    ``use_chat_template=None`` uses the template when the tokenizer has one. ``system_prompt``
    and ``chat_template_kwargs`` apply to the chat template only; ``separator`` and
    ``append_eos`` to the plain path only.

    Raises ValueError when the rendered prompt is not a token prefix of the rendered
    conversation, naming the first position where they differ.
    """
    if use_chat_template is None:
        use_chat_template = _has_chat_template(tokenizer)
    if use_chat_template:
        if not _has_chat_template(tokenizer):
            raise ValueError(
                "use_chat_template=True but the tokenizer has no chat_template; set one on the "
                "tokenizer or pass use_chat_template=False"
            )
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        user = head + [{"role": "user", "content": prompt}]
        kwargs = dict(chat_template_kwargs or {})
        prompt_ids = _template_ids(tokenizer, user, add_generation_prompt=True, **kwargs)
        full_ids = _template_ids(
            tokenizer, user + [{"role": "assistant", "content": response}], **kwargs
        )
        n = len(prompt_ids)
        if full_ids[:n] != prompt_ids:
            diff = next(
                (i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
                min(n, len(full_ids)),
            )
            lo = max(0, diff - 3)
            raise ValueError(
                "chat template output with add_generation_prompt=True is not a token prefix of "
                f"the full conversation: they differ at token {diff} (prompt part "
                f"{tokenizer.convert_ids_to_tokens(prompt_ids[lo : diff + 3])}, conversation "
                f"{tokenizer.convert_ids_to_tokens(full_ids[lo : diff + 3])}). Use a template "
                "whose generation prompt matches how it renders assistant turns, or pass "
                "use_chat_template=False"
            )
        if len(full_ids) == n:
            raise ValueError(
                f"chat template rendered no tokens for the response {response[:40]!r}; "
                "check that the template renders assistant messages"
            )
        return prompt_ids, full_ids[n:]

    prompt_ids = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    prompt_ids += tokenizer(prompt + separator, add_special_tokens=False)["input_ids"]
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no eos_token; set one")
        response_ids.append(tokenizer.eos_token_id)
    return prompt_ids, response_ids


def truncate_split(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    max_tokens: int,
    bos_token_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """Cut (prompt, response) ids to at most ``max_tokens`` together.

    The response keeps its first ``min(R, max_tokens - min(P, max_tokens // 2))`` tokens and
    the prompt keeps its last tokens in the space left. When the prompt starts with
    ``bos_token_id``, that BOS stays first and the tail is taken from the rest.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    p, r = len(prompt_ids), len(response_ids)
    if p + r <= max_tokens:
        return list(prompt_ids), list(response_ids)
    r_keep = min(r, max_tokens - min(p, max_tokens // 2))
    p_keep = min(p, max_tokens - r_keep)
    prompt = list(prompt_ids)
    if p_keep == 0:
        kept_prompt: list[int] = []
    elif bos_token_id is not None and prompt[0] == bos_token_id:
        kept_prompt = [prompt[0]] + (prompt[len(prompt) - (p_keep - 1) :] if p_keep > 1 else [])
    else:
        kept_prompt = prompt[p - p_keep :]
    return kept_prompt, list(response_ids[:r_keep])


def _build(
    prompt_ids: list[int], response_ids: list[int], bos_token_id: int | None, truncated: bool
) -> EncodedExample:
    ids = np.asarray(prompt_ids + response_ids, dtype=np.int32)
    response_mask = np.zeros(ids.shape, dtype=bool)
    response_mask[len(prompt_ids) :] = True
    token_mask = np.ones(ids.shape, dtype=bool)
    if bos_token_id is not None and ids.size and ids[0] == bos_token_id:
        token_mask[0] = False
    return EncodedExample(ids, response_mask, token_mask, len(prompt_ids), truncated)


def encode_example(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    max_tokens: int,
    report: TokenizeReport | None = None,
    **split_kwargs: Any,
) -> EncodedExample:
    """Encode one example, truncated to ``max_tokens``; see the module docstring.

    ``split_kwargs`` go to ``split_prompt_response``. When ``report`` is given, the example
    and any truncation are counted in it.
    """
    prompt_ids, response_ids = split_prompt_response(tokenizer, prompt, response, **split_kwargs)
    bos = tokenizer.bos_token_id
    kept_p, kept_r = truncate_split(prompt_ids, response_ids, max_tokens, bos)
    truncated = len(kept_p) + len(kept_r) < len(prompt_ids) + len(response_ids)
    if report is not None:
        report.num_examples += 1
        if truncated:
            report.num_truncated += 1
            report.prompt_tokens_dropped += len(prompt_ids) - len(kept_p)
            report.response_tokens_dropped += len(response_ids) - len(kept_r)
    return _build(kept_p, kept_r, bos, truncated)


def encode_response_alone(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    max_tokens: int,
    **split_kwargs: Any,
) -> EncodedExample:
    """Encode the response without its prompt: ``[BOS] + response ids``, for IFD.

    The response ids are the same ones ``encode_example`` scores (same template, same
    end-of-turn tokens), cut to their first ``max_tokens - 1``. Without a BOS token the first
    response token has no context, so it is left out of the response mask.
    """
    _, response_ids = split_prompt_response(tokenizer, prompt, response, **split_kwargs)
    bos = tokenizer.bos_token_id
    if bos is not None:
        example = _build(
            [bos], response_ids[: max_tokens - 1], bos, len(response_ids) >= max_tokens
        )
        return example
    example = _build([], response_ids[:max_tokens], None, len(response_ids) > max_tokens)
    example.response_mask[0] = False
    return example


def encode_records(
    tokenizer: Any,
    records: Sequence[Any],
    *,
    max_tokens: int,
    **split_kwargs: Any,
) -> tuple[list[EncodedExample], TokenizeReport]:
    """Encode records (anything with ``.prompt`` and ``.response``) and count truncations."""
    report = TokenizeReport()
    encoded = [
        encode_example(
            tokenizer, r.prompt, r.response, max_tokens=max_tokens, report=report, **split_kwargs
        )
        for r in records
    ]
    if report.num_truncated:
        logger.info(
            "truncated %d of %d examples to %d tokens (dropped %d prompt, %d response tokens)",
            report.num_truncated,
            report.num_examples,
            max_tokens,
            report.prompt_tokens_dropped,
            report.response_tokens_dropped,
        )
    return encoded, report


# ---------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class Batch:
    """One padded batch; padding rows have ``example_idx_b == -1`` and all-zero masks."""

    tokens_bt: np.ndarray  # int32
    attention_mask_bt: np.ndarray  # int32, 1 on real tokens
    response_mask_bt: np.ndarray  # bool
    token_mask_bt: np.ndarray  # bool, real tokens without a leading BOS
    positions_bt: np.ndarray  # int32, 0-based position of each real token in its example
    example_idx_b: np.ndarray  # int64, index into the examples passed to pack_batches


def bucket_lengths(
    max_len: int, *, scheme: Literal["multiple", "pow2"] = "multiple", multiple: int = 64
) -> tuple[int, ...]:
    """Return the padded lengths used for bucketing, ascending, the last one ``max_len``.

    ``"multiple"``: ``multiple, 2 * multiple, ...`` below ``max_len``, then ``max_len``.
    ``"pow2"``: powers of two from ``multiple`` below ``max_len``, then ``max_len``.
    """
    if max_len < 1 or multiple < 1:
        raise ValueError(f"max_len and multiple must be positive, got {max_len}, {multiple}")
    if scheme == "multiple":
        lengths = list(range(multiple, max_len, multiple))
    elif scheme == "pow2":
        lengths, n = [], multiple
        while n < max_len:
            lengths.append(n)
            n *= 2
    else:
        raise ValueError(f"scheme must be 'multiple' or 'pow2', got {scheme!r}")
    return (*lengths, max_len)


def pack_batches(
    examples: Sequence[EncodedExample],
    *,
    tokens_per_batch: int,
    max_len: int | None = None,
    buckets: Sequence[int] | None = None,
    padding_side: Literal["left", "right"] = "right",
    pad_id: int = 0,
    pad_rows: bool = True,
) -> list[Batch]:
    """Sort examples by length, bucket them and cut each bucket into fixed-shape batches.

    Args:
      examples: encoded examples, each at most the largest bucket long.
      tokens_per_batch: token budget per batch; a bucket of length ``L`` gets
        ``max(1, tokens_per_batch // L)`` rows.
      max_len: largest padded length; with ``buckets=None`` the buckets are
        ``bucket_lengths(max_len)``. Defaults to the longest example.
      buckets: explicit padded lengths (overrides ``max_len``).
      padding_side: where padding goes in each row.
      pad_id: token id written at padded positions (masked out by ``attention_mask_bt``).
      pad_rows: fill the last batch of each bucket with padding rows so every batch of a
        bucket has the same shape.

    Returns:
      Batches ordered by bucket, then by (length, example index) within a bucket.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not examples:
        return []
    longest = max(e.length for e in examples)
    if buckets is None:
        buckets = bucket_lengths(max_len if max_len is not None else longest)
    buckets = sorted(set(int(b) for b in buckets))
    if longest > buckets[-1]:
        raise ValueError(
            f"an example has {longest} tokens, over the largest bucket {buckets[-1]}; encode "
            "with a smaller max_tokens or pass a larger max_len"
        )

    by_bucket: dict[int, list[int]] = {b: [] for b in buckets}
    order = sorted(range(len(examples)), key=lambda i: (examples[i].length, i))
    bucket_of = np.searchsorted(np.asarray(buckets), [examples[i].length for i in order])
    for i, b in zip(order, bucket_of, strict=True):
        by_bucket[buckets[b]].append(i)

    batches = []
    for length, members in by_bucket.items():
        rows = max(1, tokens_per_batch // length)
        for start in range(0, len(members), rows):
            chunk = members[start : start + rows]
            n_rows = rows if pad_rows else len(chunk)
            batches.append(_pad_batch(examples, chunk, n_rows, length, padding_side, pad_id))
    return batches


def _pad_batch(
    examples: Sequence[EncodedExample],
    chunk: list[int],
    n_rows: int,
    length: int,
    padding_side: str,
    pad_id: int,
) -> Batch:
    tokens = np.full((n_rows, length), pad_id, dtype=np.int32)
    attention = np.zeros((n_rows, length), dtype=np.int32)
    response = np.zeros((n_rows, length), dtype=bool)
    token = np.zeros((n_rows, length), dtype=bool)
    example_idx = np.full((n_rows,), -1, dtype=np.int64)
    for row, i in enumerate(chunk):
        e = examples[i]
        start = 0 if padding_side == "right" else length - e.length
        span = slice(start, start + e.length)
        tokens[row, span] = e.input_ids
        attention[row, span] = 1
        response[row, span] = e.response_mask
        token[row, span] = e.token_mask
        example_idx[row] = i
    positions = np.maximum(np.cumsum(attention, axis=1) - 1, 0).astype(np.int32)
    return Batch(tokens, attention, response, token, positions, example_idx)
