"""Evaluation metrics: hand-checked exact match, and ROUGE/BLEU/chrF against direct calls."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from train.metrics import (
    bleu,
    chrf,
    exact_match,
    extract_answer,
    math_accuracy,
    normalize_number,
    rouge,
    text_metrics,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet sells 16 - 3 = 13 eggs.\n#### 13", "13"),
        ("#### 18", "18"),
        ("####18", "18"),
        ("#### $1,234.50", "1234.5"),
        ("#### 18.00", "18"),
        ("#### -0", "0"),
        ("#### 007", "7"),
        ("steps 1 2 3 #### 42 then 99", "42"),  # first number after the marker
        ("a #### 1 #### 2", "2"),  # last marker wins
        ("The answer is 72.", "72"),  # no marker: last number
        ("She paid $5 and then $1,000 in total.", "1000"),
        ("10-4", "4"),  # a minus after a digit is subtraction, not a sign
        ("x = -3", "-3"),
        ("total \u22127", "-7"),  # Unicode minus sign
        ("so .5 of it", "0.5"),
        ("1,2", "2"),  # not a thousands group: two numbers
        ("12,345,678 apples", "12345678"),
        ("answer 5 #### unknown", "5"),  # no number after the marker: last number
        ("no digits at all", None),
        ("####", None),
    ],
)
def test_extract_answer_cases(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("18.0", "18"), ("18.50", "18.5"), ("+3", "3"), ("$1,000", "1000"), ("-0.0", "0")],
)
def test_normalize_number_cases(raw, expected):
    assert normalize_number(raw) == expected


def test_exact_match_cases():
    reference = "Janet sells 9 duck eggs a day for $2 each.\n#### 18"
    assert exact_match("So she makes 18 dollars.", reference)
    assert exact_match("#### $18.00", reference)
    assert not exact_match("#### 19", reference)
    assert not exact_match("I don't know", reference)
    assert not exact_match("18", "no reference number")


def test_math_accuracy_fraction():
    references = ["#### 1", "#### 2", "#### 3", "#### 4"]
    predictions = ["1", "the answer is 2.0", "#### 5", "none"]
    assert math_accuracy(predictions, references) == 0.5
    with pytest.raises(ValueError, match="one reference per prediction"):
        math_accuracy(predictions, references[:3])
    with pytest.raises(ValueError, match="no predictions"):
        math_accuracy([], [])


PREDICTIONS = [
    "the cat sat on the mat",
    "Janet sells thirteen eggs every day at the market",
    "guten morgen, wie geht es dir",
]
REFERENCES = [
    "the cat is sitting on the mat",
    "Janet sells 13 eggs at the farmers' market daily",
    "good morning, how are you",
]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_package(use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    per_example = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    got = rouge(PREDICTIONS, REFERENCES, use_stemmer=use_stemmer)
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = sum(s[kind].fmeasure for s in per_example) / len(per_example)
        assert got[kind] == pytest.approx(expected, abs=1e-12)


def test_rouge_hand_checked():
    # prediction "the cat sat", reference "the cat sat on the mat": unigram precision 3/3,
    # recall 3/6, F1 = 2 * 1 * 0.5 / 1.5 = 2/3; bigrams 2/2 and 2/5, F1 = 4/7
    got = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert got["rouge1"] == pytest.approx(2 / 3)
    assert got["rouge2"] == pytest.approx(4 / 7)
    assert got["rougeL"] == pytest.approx(2 / 3)


def test_bleu_chrf_match_sacrebleu():
    expected_bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    expected_chrf = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert bleu(PREDICTIONS, REFERENCES) == pytest.approx(expected_bleu, abs=1e-12)
    assert chrf(PREDICTIONS, REFERENCES) == pytest.approx(expected_chrf, abs=1e-12)
    assert bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)
    assert chrf(REFERENCES, REFERENCES) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no predictions"):
        bleu([], [])


def test_text_metrics_keys():
    metrics = text_metrics(PREDICTIONS, REFERENCES)
    assert set(metrics) == {"rouge1", "rouge2", "rougeL", "bleu", "chrf"}
    assert metrics["bleu"] == pytest.approx(bleu(PREDICTIONS, REFERENCES))
