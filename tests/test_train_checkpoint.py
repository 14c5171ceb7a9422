"""Resuming a fine-tuning run: same step, same batches, same final weights."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.train_assets import make_tiny_run, tiny_config
from train.loop import run_finetune

STEPS = 6
LORA = ("lora.enabled=true", "lora.rank=4", "optim.learning_rate=0.01")


class SimulatedCrashError(RuntimeError):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def _config(root, out, *extra):
    return tiny_config(root, out, f"loop.max_steps={STEPS}", "loop.save_every=2", *extra)


def _assert_same(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("extra", [(), LORA], ids=["full", "lora"])
def test_stop_and_resume_matches_uninterrupted(root, tmp_path, extra):
    reference = run_finetune(_config(root, tmp_path / "ref", *extra))

    cfg = _config(root, tmp_path / "run", *extra)
    first = run_finetune(cfg, callback=lambda step, stats: step == 3)
    assert first.interrupted and first.step == 3
    steps_seen = []
    second = run_finetune(cfg, callback=lambda step, stats: steps_seen.append(step))
    assert steps_seen == [4, 5, 6], "the resumed run must start at the step after the stop"
    assert not second.interrupted
    assert second.step == STEPS
    _assert_same(second.params, reference.params)


def test_crash_resumes_from_last_checkpoint(root, tmp_path):
    reference = run_finetune(_config(root, tmp_path / "ref"))
    cfg = _config(root, tmp_path / "run")

    def crash_after_five(step, stats):
        if step == 5:
            raise SimulatedCrashError("simulated crash")

    with pytest.raises(SimulatedCrashError):
        run_finetune(cfg, callback=crash_after_five)
    steps_seen = []
    second = run_finetune(cfg, callback=lambda step, stats: steps_seen.append(step))
    assert steps_seen == [5, 6], "work after the step-4 checkpoint is redone"
    _assert_same(second.params, reference.params)
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["steps"] == STEPS
    assert run_info["steps_this_session"] == 2


def test_resume_with_other_seed_is_rejected(root, tmp_path):
    cfg = _config(root, tmp_path / "run")
    run_finetune(cfg, callback=lambda step, stats: step == 2)
    changed = _config(root, tmp_path / "run", "seed=1")
    with pytest.raises(ValueError, match="seed"):
        run_finetune(changed)
