"""Evaluation metrics for generated answers: math exact match, ROUGE, BLEU and chrF.

Math exact match (GSM8K style):

1. Answer extraction: when the text contains ``####``, the first number after the last
   ``####``; otherwise, or when no number follows it, the last number anywhere in the text.
2. A number is an optional sign (``-``, ``+`` or the Unicode minus sign, counted only when
   it does not follow a letter or digit), an optional ``$``,
   then digits with optional comma thousands groups (``1,234``) and an optional decimal part
   (``.5``, ``18.50``). A comma that does not group three digits ends the number, so ``1,2``
   is two numbers.
3. Normalization: drop ``$``, commas and a ``+`` sign; an integral value is written without a
   decimal part (``18.0``, ``18.00`` and ``018`` become ``18``; ``-0`` becomes ``0``); other
   values lose trailing zeros (``18.50`` becomes ``18.5``, ``.5`` becomes ``0.5``).
4. A prediction matches when its normalized answer equals the reference's. A prediction with
   no number never matches.

Text metrics use the reference packages unchanged; the scales are the packages' own:

- ``rouge``: mean F-measure over examples of ROUGE-1, ROUGE-2 and ROUGE-L from
  ``rouge-score`` (0 to 1). Its default tokenizer lowercases and keeps only ASCII letters and
  digits, so text in other scripts scores 0; pass ``tokenizer=`` for such languages.
- ``bleu`` and ``chrf``: corpus-level scores from ``sacrebleu`` (0 to 100), BLEU with
  sacrebleu's default ``13a`` tokenization and exponential smoothing, chrF with
  ``char_order=6``, ``word_order=0`` and ``beta=2``. One reference per example.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

logger = logging.getLogger(__name__)

# A sign counts only when it does not follow a letter or digit, so "10-4" ends in "4".
_SIGN = r"(?:(?<![0-9A-Za-z])[-+\u2212])?"
_NUMBER_RE = re.compile(_SIGN + r"\$?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+)")


def normalize_number(text: str) -> str | None:
    """Return the normalized form of one number string (rules in the module docstring)."""
    cleaned = text.replace("\u2212", "-").replace("$", "").replace(",", "").lstrip("+")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """Return the normalized final numeric answer of ``text``, or None when it has none."""
    marker = text.rfind("####")
    if marker >= 0:
        after = _NUMBER_RE.search(text, marker + 4)
        if after is not None:
            return normalize_number(after.group())
    numbers = _NUMBER_RE.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def exact_match(prediction: str, reference: str) -> bool:
    """Return whether the final numbers of ``prediction`` and ``reference`` are equal."""
    predicted = extract_answer(prediction)
    return predicted is not None and predicted == extract_answer(reference)


def math_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return the fraction of predictions that exactly match their reference answer."""
    _check_lengths(predictions, references)
    hits = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; pass one "
            "reference per prediction"
        )
    if not predictions:
        raise ValueError("no predictions to score")


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    use_stemmer: bool = False,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Return mean ROUGE-1/2/L F-measures: ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=use_stemmer, tokenizer=tokenizer)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        # rouge-score takes (target, prediction)
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / len(predictions) for kind, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> float:
    """Return corpus BLEU (0 to 100) from sacrebleu with one reference per prediction."""
    import sacrebleu

    _check_lengths(predictions, references)
    score = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize)
    return float(score.score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return corpus chrF (0 to 100) from sacrebleu with one reference per prediction."""
    import sacrebleu

    _check_lengths(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Return ROUGE-1/2/L, BLEU and chrF in one dict."""
    out = rouge(predictions, references)
    out["bleu"] = bleu(predictions, references)
    out["chrf"] = chrf(predictions, references)
    return out
