"""Evaluation end to end on a tiny model, checked against transformers and rouge-score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from igds_jax.cli import main as igds_main
from models.loading import load_model
from tests.train_assets import make_tiny_run, tiny_config
from train.config_io import to_dict
from train.data import read_records
from train.evaluate import evaluate_model
from train.loop import run_finetune

torch = pytest.importorskip("torch")

N_TEST = 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 60 steps and exported, so its next-token choices are clear."""
    root = make_tiny_run(tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(
        root,
        out,
        "loop.max_steps=60",
        "optim.learning_rate=0.01",
        "export.enabled=true",
        f"data.test={root / 'test.jsonl'}",
        f"data.eval={root / 'eval.jsonl'}",
        f"eval.max_examples={N_TEST}",
        "eval.batch_size=3",
        "eval.max_new_tokens=16",
        "eval.at_end=false",
    )
    run_finetune(cfg)
    return root, cfg, load_model(out / "model")


def _final_number(text: str) -> str | None:
    tail = text.rsplit("####", 1)[-1].strip().split()
    return tail[0] if tail else None


def test_evaluate_matches_transformers(trained, tmp_path):
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM

    root, cfg, model = trained
    results = evaluate_model(
        model.graphdef, model.state, model.tokenizer, model.config, cfg, tmp_path
    )
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == N_TEST == results["num_test"]

    # greedy answers: transformers, one unpadded prompt at a time.
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(cfg.out_dir + "/model").eval()
    records = read_records(cfg.data.test, cfg.data, N_TEST)
    for record, row in zip(records, rows, strict=True):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": record.prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = hf.generate(
                torch.as_tensor([ids]),
                max_new_tokens=cfg.eval.max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        expected = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        assert row["prediction"] == expected, record.id
        assert row["reference"] == record.response

    # metrics from the predictions, computed without train.metrics.
    hits = [_final_number(r["prediction"]) == _final_number(r["reference"]) for r in rows]
    assert results["math_accuracy"] == pytest.approx(sum(hits) / len(rows))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = np.mean(
        [scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in rows]
    )
    assert rouge_l > 0, "the trained model should share some tokens with the references"
    assert results["rougeL"] == pytest.approx(rouge_l)

    # held-out loss: torch cross-entropy over the response tokens of each example.
    total, count = 0.0, 0
    for record in read_records(cfg.data.eval, cfg.data):
        user = [{"role": "user", "content": record.prompt}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(
            user + [{"role": "assistant", "content": record.response}], tokenize=False
        )
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(full, add_special_tokens=False)["input_ids"][: cfg.data.max_tokens]
        with torch.no_grad():
            logits = hf(torch.as_tensor([full_ids])).logits[0]
        targets = torch.as_tensor(full_ids[len(prompt_ids) :])
        losses = torch.nn.functional.cross_entropy(
            logits[len(prompt_ids) - 1 : -1], targets, reduction="sum"
        )
        total, count = total + float(losses), count + len(targets)
    assert results["eval_loss"] == pytest.approx(total / count, rel=1e-4)
    assert results["num_eval"] == 32


def test_cli_evaluate_writes_files(trained, tmp_path):
    import yaml

    root, cfg, _ = trained
    data = to_dict(cfg)
    data["model"] = cfg.out_dir + "/model"
    data["eval"]["metrics"] = ["math", "bleu", "chrf"]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "eval"
    assert igds_main(["evaluate", str(path), "--out", str(out), "--set", "data.eval=null"]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert set(results) >= {"math_accuracy", "bleu", "chrf", "num_test"}
    assert "eval_loss" not in results
    assert len((out / "predictions.jsonl").read_text().splitlines()) == N_TEST
