"""Demo records built from the real PyPI assets (fetched once into the default cache).

References are independent of the code under test. Template ids come from listing the
package's files. GSM8K calculator annotations ``<<a*b=c>>`` are re-evaluated with a small AST
evaluator. Probe and Shakespeare records are traced back to the raw files, read here with
pandas and plain file reads.
"""

from __future__ import annotations

import ast
import operator
import re

import pandas as pd
import pytest

from igds_jax import assets, demo_data

SEED = 0
N_VARIANTS = 3
ANSWER_LINE = re.compile(r"\n#### (-?[0-9][0-9,]*(?:\.[0-9]+)?)$")
CALCULATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _arithmetic(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        return _BINARY_OPS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError(f"not plain arithmetic: {ast.dump(node)}")


@pytest.fixture(scope="module")
def english_template_ids() -> list[str]:
    symbolic = assets.gsm_templates_dir() / "eng" / "symbolic"
    return sorted(path.stem for path in symbolic.glob("*.toml"))


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return demo_data.gsm_splits(N_VARIANTS, SEED)


@pytest.fixture(scope="module")
def pool() -> demo_data.Pool:
    return demo_data.build_pool(120, 280, SEED, task_variants_per_template=N_VARIANTS)


def _template_ids(records: list[dict]) -> set[str]:
    return {r["meta"]["template_id"] for r in records}


def test_split_templates_partition(english_template_ids):
    assert len(english_template_ids) == 100
    split = demo_data.split_templates(english_template_ids, SEED)
    assert [len(split[name]) for name in demo_data.SPLITS] == [60, 20, 20]
    assert set(split["source"]).isdisjoint(split["dev"])
    assert set(split["source"]).isdisjoint(split["test"])
    assert set(split["dev"]).isdisjoint(split["test"])
    assert sorted(split["source"] + split["dev"] + split["test"]) == english_template_ids

    other_seed = demo_data.split_templates(english_template_ids, SEED + 1)
    assert other_seed["test"] != split["test"]


def test_split_templates_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        demo_data.split_templates(["0000", "0001"], SEED, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="three"):
        demo_data.split_templates(["0000", "0001"], SEED, (0.5, 0.5))


def test_math_records_split_by_template(splits, english_template_ids):
    split = demo_data.split_templates(english_template_ids, SEED)
    for name in demo_data.SPLITS:
        assert _template_ids(splits[name]) <= set(split[name])
        assert all(r["meta"]["split"] == name for r in splits[name])
    assert _template_ids(splits["source"]).isdisjoint(_template_ids(splits["dev"]))
    assert _template_ids(splits["source"]).isdisjoint(_template_ids(splits["test"]))
    assert _template_ids(splits["dev"]).isdisjoint(_template_ids(splits["test"]))
    # Most templates generate variants (0.5.5 has two whose answer check fails).
    assert len(_template_ids(splits["source"])) >= 55
    assert len(splits["test"]) >= 15 * N_VARIANTS


def test_math_response_ends_with_answer(splits):
    for records in splits.values():
        for record in records:
            match = ANSWER_LINE.search(record["response"])
            assert match, record["response"][-80:]
            assert match.group(1) == record["meta"]["answer"], record["id"]
            assert record["meta"]["task"] == "math"
            assert record["source"] == "gsm_symbolic"


def test_math_calculations_are_correct(splits):
    checked = 0
    for records in splits.values():
        for record in records:
            for expression, result in CALCULATION.findall(record["response"]):
                value = _arithmetic(ast.parse(expression.replace(",", "").strip(), mode="eval"))
                expected = float(result.replace(",", ""))
                # Written results are sometimes rounded to cents or whole numbers.
                assert abs(value - expected) <= 0.01 * max(1.0, abs(expected)), (
                    record["id"],
                    expression,
                    result,
                )
                checked += 1
    assert checked > 500


def test_variants_distinct_and_numbered(splits):
    for records in splits.values():
        prompts = [r["prompt"] for r in records]
        assert len(set(prompts)) == len(prompts)
        ids = [r["id"] for r in records]
        assert len(set(ids)) == len(ids)
        for record in records:
            assert 0 <= record["meta"]["variant"] < N_VARIANTS


def test_gsm_splits_deterministic(splits):
    again = demo_data.gsm_splits(N_VARIANTS, SEED)
    assert again == splits

    shorter = demo_data.gsm_splits(N_VARIANTS - 1, SEED)
    for name in demo_data.SPLITS:
        prefix = [r for r in splits[name] if r["meta"]["variant"] < N_VARIANTS - 1]
        assert shorter[name] == prefix


def test_translation_shares_math_split(splits):
    pairs = demo_data.translation_splits("fra", SEED)
    all_math_ids = set().union(*(_template_ids(splits[n]) for n in demo_data.SPLITS))
    for name in demo_data.SPLITS:
        ids = _template_ids(pairs[name])
        assert ids, name
        # Same split: no translation template sits in another split's math templates.
        assert ids.isdisjoint(all_math_ids - _template_ids(splits[name]))
    total = sum(len(pairs[n]) for n in demo_data.SPLITS)
    assert 60 <= total <= 100

    accented = 0
    for record in pairs["source"]:
        source_text = record["prompt"].split("\n\n", 1)[1]
        assert sorted(re.findall("[0-9]+", source_text)) == sorted(
            re.findall("[0-9]+", record["response"])
        )
        assert record["response"] != source_text
        accented += bool(re.search("[éèàçê]", record["response"]))
    assert accented >= len(pairs["source"]) // 2


def test_pool_share_and_counts(pool):
    assert len(pool.records) == 400
    assert pool.math_share == pytest.approx(0.3)
    math_records = [r for r in pool.records if r["meta"]["task"] == "math"]
    assert len(math_records) == 120
    assert {r["source"] for r in pool.records} == {"gsm_symbolic", "sae_probes", "shakespeare"}
    assert sum(pool.source_counts.values()) == 400
    ids = [r["id"] for r in pool.records]
    assert len(set(ids)) == len(ids)
    for record in pool.records:
        assert record["prompt"].strip()
        assert record["response"].strip()


def test_pool_math_stays_in_source_split(pool, splits):
    math_records = [r for r in pool.records if r["meta"]["task"] == "math"]
    assert _template_ids(math_records) <= _template_ids(splits["source"])

    task_ids = {r["id"] for records in splits.values() for r in records}
    task_prompts = {r["prompt"] for records in splits.values() for r in records}
    for record in math_records:
        assert record["id"] not in task_ids
        assert record["prompt"] not in task_prompts
        assert record["meta"]["variant"] >= N_VARIANTS
        assert ANSWER_LINE.search(record["response"])


def test_probe_records_match_raw_rows(pool):
    data_dir = assets.sae_probes_data_dir() / "cleaned_data"
    sst2 = pd.read_csv(data_dir / "92_glue_sst2.csv.zst", dtype=str, keep_default_na=False)
    probes = [r for r in pool.records if r["source"] == "sae_probes"]
    assert len({r["meta"]["task"] for r in probes}) >= 10

    tables: dict[str, pd.DataFrame] = {}
    checked = 0
    for record in probes:
        dataset = record["meta"]["dataset"]
        if dataset not in tables:
            path = data_dir / f"{dataset}.csv.zst"
            tables[dataset] = pd.read_csv(path, dtype=str, keep_default_na=False)
        raw = tables[dataset].iloc[record["meta"]["row"]]
        first_part = raw["prompt"].split(" | ")[0].strip()
        assert first_part in record["prompt"]
        if record["meta"]["dataset"] == "92_glue_sst2":
            label = sst2.iloc[record["meta"]["row"]]["target"]
            assert record["response"] == {"1": "positive", "0": "negative"}[label]
            checked += 1
    assert checked >= 1


def test_continuations_match_source_text(pool):
    texts = assets.shakespeare_texts_dir()
    continuations = [r for r in pool.records if r["source"] == "shakespeare"]
    assert len(continuations) == round(280 * 0.25)
    for record in continuations:
        raw = (texts / f"{record['meta']['work']}_gut.txt").read_text(encoding="utf-8")
        lines = [line.rstrip() for line in raw.splitlines() if line.strip()]
        passage = record["prompt"].split("\n\n", 1)[1].split("\n")
        response = record["response"].split("\n")
        assert len(passage) == demo_data.CONTINUATION_PROMPT_LINES
        assert len(response) == demo_data.CONTINUATION_RESPONSE_LINES
        window = passage + response
        starts = [i for i, line in enumerate(lines) if line == window[0]]
        assert any(lines[i : i + len(window)] == window for i in starts), record["id"]


def test_pool_deterministic(pool):
    again = demo_data.build_pool(120, 280, SEED, task_variants_per_template=N_VARIANTS)
    assert again.records == pool.records
    other = demo_data.build_pool(120, 280, SEED + 1, task_variants_per_template=N_VARIANTS)
    assert [r["id"] for r in other.records] != [r["id"] for r in pool.records]


def test_sae_training_texts_mix():
    docs = list(demo_data.sae_training_texts(400, SEED))
    assert len(docs) == 400
    assert all(isinstance(doc, str) and doc.strip() for doc in docs)
    assert docs == list(demo_data.sae_training_texts(400, SEED))

    gsm = [doc for doc in docs if doc.startswith("Question: ") and "\n#### " in doc]
    champ = [doc for doc in docs if doc.startswith("Problem: ")]
    # Binomial(400, 0.25) is within 0.25 +- 0.07 with probability > 0.998.
    assert 0.18 <= len(gsm) / len(docs) <= 0.32
    assert champ


def test_sae_training_texts_math_only_from_source(splits):
    # The corpus walks the source templates round-robin from their first variant, and those
    # first variants are also gsm_splits' records. Had dev or test templates been included,
    # 150 documents would cover their first variants, which are in ``splits``.
    docs = list(demo_data.sae_training_texts(150, SEED, mix={"gsm": 1.0}))
    assert all(doc.startswith("Question: ") for doc in docs)
    questions = {doc.split("\nAnswer: ", 1)[0].removeprefix("Question: ") for doc in docs}
    assert questions & {r["prompt"] for r in splits["source"]}
    held_out = {r["prompt"] for name in ("dev", "test") for r in splits[name]}
    assert questions.isdisjoint(held_out)

    with pytest.raises(ValueError, match="mix"):
        demo_data.sae_training_texts(5, SEED, mix={"wikipedia": 1.0})
