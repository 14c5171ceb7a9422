"""Supervised fine-tuning: response masks, the loss, accumulation, schedules and meshes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from igds_jax.cli import main as igds_main
from models.loading import abstract_model, load_model
from models.transformer import forward
from tests.train_assets import make_tiny_run, tiny_config
from train.batching import StepSchedule
from train.config import OptimConfig
from train.config_io import to_dict
from train.data import encode, read_records
from train.evaluate import heldout_loss
from train.loop import run_finetune
from train.params import flatten_state, unflatten_state
from train.sft import learning_rate_schedule, make_optimizer, make_step_functions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_tiny_run(tmp_path_factory.mktemp("tiny"))
    return root, load_model(root / "model")


def _weighted_ids(batch: dict, step_row: tuple[int, int]) -> list[int]:
    a, r = step_row
    keep = batch["loss_mask"][a, r] > 0
    return [int(t) for t in batch["tokens"][a, r][keep]]


@pytest.mark.parametrize("chat", [True, False])
def test_response_mask_is_exactly_response_ids(tiny, tmp_path, chat):
    root, model = tiny
    tok = model.tokenizer
    cfg = tiny_config(root, tmp_path, f"data.use_chat_template={str(chat).lower()}")
    records = read_records(cfg.data.train, cfg.data, limit=12)
    schedule = StepSchedule(
        encode(tok, records, cfg.data), tokens_per_batch=256, bucket_multiple=32, pad_id=0
    )
    seen = 0
    for step in range(schedule.steps_per_epoch):
        plan, batch = schedule.plan(step), schedule.batch(step)
        for r, idx in enumerate(plan.example_idx):
            if idx < 0:
                assert batch["loss_mask"][0, r].sum() == 0, "an empty row carries loss weight"
                continue
            record = records[idx]
            if chat:
                # the response is the text the full conversation adds after the prompt.
                user = [{"role": "user", "content": record.prompt}]
                prompt_text = tok.apply_chat_template(
                    user, tokenize=False, add_generation_prompt=True
                )
                full_text = tok.apply_chat_template(
                    user + [{"role": "assistant", "content": record.response}], tokenize=False
                )
                assert full_text.startswith(prompt_text)
                expected = tok(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
            else:
                expected = tok(record.response, add_special_tokens=False)["input_ids"]
                expected = expected + [tok.eos_token_id]
            assert _weighted_ids(batch, (0, r)) == expected, record.id
            seen += 1
    assert seen == len(records)


def test_loss_equals_numpy_cross_entropy(tiny, tmp_path):
    root, model = tiny
    cfg = tiny_config(root, tmp_path)
    records = read_records(cfg.data.train, cfg.data, limit=16)
    batch = StepSchedule(
        encode(model.tokenizer, records, cfg.data), tokens_per_batch=512, bucket_multiple=32
    ).batch(0)
    graphdef, template = abstract_model(model.config, jnp.float32)
    params = flatten_state(model.state)
    fns = make_step_functions(graphdef, template, optax.sgd(0.0))
    micro = {k: v[0] for k, v in batch.items()}
    loss_sum, count = fns.loss_sums(params, {}, micro)

    logits, _ = forward(
        model.graphdef,
        model.state,
        micro["tokens"],
        micro["attention_mask"],
        positions_bt=micro["positions"],
    )
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    expected_sum, expected_count = 0.0, 0
    rows, cols = np.nonzero(micro["loss_mask"])
    for b, t in zip(rows, cols, strict=True):
        expected_sum -= logp[b, t - 1, micro["tokens"][b, t]]
        expected_count += 1
    assert int(count) == expected_count
    assert abs(float(loss_sum) - expected_sum) <= 1e-4 * expected_sum


def test_loss_falls_below_bound(tiny, tmp_path):
    root, model = tiny
    cfg = tiny_config(
        root, tmp_path, "loop.max_steps=40", "optim.warmup_steps=4", "optim.learning_rate=0.01"
    )
    records = read_records(cfg.data.train, cfg.data)
    examples = encode(model.tokenizer, records, cfg.data)
    before = heldout_loss(model.graphdef, model.state, examples)
    result = run_finetune(cfg)
    graphdef, template = abstract_model(model.config, jnp.float32)
    after = heldout_loss(graphdef, unflatten_state(template, result.params), examples)
    # A random 260-token model starts near ln(260) = 5.56 nats per token.
    assert before > 5.0
    assert after < 1.5, f"loss {before:.3f} -> {after:.3f} after 40 steps"


def test_accumulation_matches_one_big_batch(tiny, tmp_path):
    root, model = tiny
    cfg = tiny_config(root, tmp_path)
    records = read_records(cfg.data.train, cfg.data, limit=16)
    big = StepSchedule(
        encode(model.tokenizer, records, cfg.data),
        tokens_per_batch=16 * 64,
        bucket_multiple=64,
        max_len=64,
    ).batch(0)
    assert big["tokens"].shape[:2] == (1, 16)
    split = {k: v.reshape(2, 8, *v.shape[2:]) for k, v in big.items()}
    graphdef, template = abstract_model(model.config, jnp.float32)
    tx = make_optimizer(OptimConfig(grad_clip_norm=None))
    fns = make_step_functions(graphdef, template, tx)
    out = []
    for batch in (big, split):
        params = {k: jnp.array(v) for k, v in flatten_state(model.state).items()}
        new, _, stats = fns.train_step(params, tx.init(params), {}, batch, 1e-2)
        out.append((jax.device_get(new), float(stats["loss"]), float(stats["tokens"])))
    assert out[0][2] == out[1][2]
    assert abs(out[0][1] - out[1][1]) < 1e-5
    for name in out[0][0]:
        np.testing.assert_allclose(out[0][0][name], out[1][0][name], atol=1e-6, err_msg=name)


def test_bfloat16_compute_close_to_float32(tiny, tmp_path):
    root, model = tiny
    cfg = tiny_config(root, tmp_path)
    records = read_records(cfg.data.train, cfg.data, limit=16)
    batch = StepSchedule(
        encode(model.tokenizer, records, cfg.data), tokens_per_batch=512, bucket_multiple=32
    ).batch(0)
    micro = {k: v[0] for k, v in batch.items()}
    graphdef, template = abstract_model(model.config, jnp.float32)
    params = flatten_state(model.state)
    means = []
    for dtype in (jnp.float32, jnp.bfloat16):
        fns = make_step_functions(graphdef, template, optax.sgd(0.0), compute_dtype=dtype)
        loss_sum, count = fns.loss_sums(params, {}, micro)
        means.append(float(loss_sum) / float(count))
    assert abs(means[0] - means[1]) < 0.05, means


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_matches_formula(kind):
    optim = OptimConfig(learning_rate=1.0, schedule=kind, warmup_steps=3, min_lr_ratio=0.1)
    schedule = learning_rate_schedule(optim, total_steps=13)
    for step in range(14):
        if step < 3:
            want = step / 3
        else:
            frac = min((step - 3) / 10, 1.0)
            if kind == "cosine":
                want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
            else:
                want = 1.0 - 0.9 * frac
        assert abs(float(schedule(step)) - want) < 1e-6, (step, float(schedule(step)), want)


def test_epoch_visits_each_example_once(tiny, tmp_path):
    root, model = tiny
    cfg = tiny_config(root, tmp_path)
    examples = encode(model.tokenizer, read_records(cfg.data.train, cfg.data), cfg.data)
    kwargs = dict(tokens_per_batch=256, bucket_multiple=16, accum_steps=2, seed=3)
    first, again = StepSchedule(examples, **kwargs), StepSchedule(examples, **kwargs)
    n = first.steps_per_epoch
    for epoch in range(2):
        idx = np.concatenate([first.plan(epoch * n + s).example_idx for s in range(n)])
        assert sorted(idx[idx >= 0].tolist()) == list(range(len(examples)))
    orders = [[first.plan(s).example_idx.tolist() for s in range(n)] for _ in range(1)]
    assert orders[0] == [again.plan(s).example_idx.tolist() for s in range(n)]
    assert orders[0] != [first.plan(n + s).example_idx.tolist() for s in range(n)]


def test_cli_finetune_writes_run_files(tiny, tmp_path):
    root, _ = tiny
    cfg = tiny_config(root, tmp_path / "run")
    data = to_dict(cfg)
    data["data"]["eval"] = str(root / "eval.jsonl")
    data["export"]["enabled"] = True
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert igds_main(["finetune", str(path), "--set", "loop.max_steps=4"]) == 0
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [4]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert np.isfinite(train_rows[0][key]), key
    assert any("eval_loss" in r for r in rows)
    assert (run / "loss.png").stat().st_size > 0
    assert (run / "model" / "config.json").exists()
    assert json.loads((run / "run.json").read_text())["steps"] == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["loop"]["max_steps"] == 4


MESH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import jax
    import numpy as np
    from pathlib import Path
    from tests.train_assets import tiny_config
    from train.loop import run_finetune

    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    assert jax.device_count() == 8, jax.devices()
    params = []
    for name, sets in [
        ("single", ["loop.mesh_data=1", "loop.mesh_model=1"]),
        ("mesh", ["loop.mesh_data=4", "loop.mesh_model=2", "loop.param_sharding=model"]),
    ]:
        cfg = tiny_config(root, out / name, "loop.max_steps=2", *sets)
        params.append(jax.device_get(run_finetune(cfg).params))
    worst = max(float(np.abs(params[0][k] - params[1][k]).max()) for k in params[0])
    print("MAXDIFF", worst)
    """
)


@pytest.mark.slow
def test_mesh_4x2_matches_single_device(tiny, tmp_path):
    root, _ = tiny
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, str(root), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("MAXDIFF")[-1])
    assert diff < 1e-5, f"params after 2 steps differ by {diff}"


def test_optimizer_with_step_rate_equals_optax_adamw():
    optim = OptimConfig(weight_decay=0.1, grad_clip_norm=None, b1=0.8, b2=0.95, eps=1e-6)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    reference_tx = optax.adamw(
        0.05, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, mask=lambda p: {"w": True, "b": False}
    )
    ours_tx = make_optimizer(optim)
    ref_params, ref_state = params, reference_tx.init(params)
    our_params, our_state = params, ours_tx.init(params)
    for _ in range(3):
        grads = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in params.items()}
        updates, ref_state = reference_tx.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        updates, our_state = ours_tx.update(grads, our_state, our_params)
        our_params = optax.apply_updates(our_params, jax.tree.map(lambda u: -0.05 * u, updates))
    for name in params:
        np.testing.assert_allclose(our_params[name], ref_params[name], rtol=1e-6, err_msg=name)
