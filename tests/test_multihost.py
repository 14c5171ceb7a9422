"""Multi-process scoring: two local processes on 127.0.0.1 against a single-process run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from igds_jax import distributed, shard_io
from igds_jax.corpus_stream import stream_records
from igds_jax.score_fns import frs_params, frs_score_fn
from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
from igds_jax.selection import select_top
from models.loading import load_model
from models.sharding import make_mesh, make_placer
from sae import load_sae
from tests import scale_assets as sa
from train.tokenize import encode_example

ENV_NAMES = (
    distributed.ENV_COORDINATOR,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_settings(clean_env):
    info = distributed.initialize()
    assert (info.process_id, info.num_processes, info.distributed) == (0, 1, False)
    assert distributed.initialize(num_processes=1).num_processes == 1


def test_partial_settings_raise(clean_env):
    with pytest.raises(ValueError, match="missing the number of processes, process id"):
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="missing the coordinator address, process id"):
        distributed.initialize()
    with pytest.raises(ValueError, match="outside 0..1"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    clean_env.setenv(distributed.ENV_PROCESS_ID, "one")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' is not an integer"):
        distributed.initialize()


@pytest.mark.parametrize("num_processes", [1, 2, 3, 7])
def test_process_split_covers_corpus_once(num_processes):
    items = [(i, f"x{i}") for i in range(50)]
    parts = [list(distributed.process_shard(items, p, num_processes)) for p in range(num_processes)]
    merged = sorted(pair for part in parts for pair in part)
    assert merged == items
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_merge_waits_for_every_process(tmp_path):
    model_dir, sae_dir = sa.write_assets(tmp_path)
    pool = sa.write_pool(tmp_path / "pool.jsonl", sa.pool_rows(20))
    mesh = make_mesh()
    model = load_model(model_dir, place=make_placer(mesh))
    sae_params, sae_cfg = load_sae(sae_dir)
    engine = ScoringEngine(
        frs_score_fn(model.graphdef, sae_cfg, model.config.n_layers),
        frs_params(model.state, sae_params, sa.FEATURES, mesh),
        ["frs"],
        mesh,
        ScoringConfig(chunk_size=4, tokens_per_batch=256, max_tokens=64, bucket_multiple=16),
    )

    def encode(record):
        return encode_example(model.tokenizer, record.prompt, record.response, max_tokens=64)

    out = tmp_path / "run"
    summary = engine.run(
        stream_records(pool), encode, out, manifest={}, process_id=1, num_processes=2
    )
    assert summary.num_scored == 10
    assert summary.num_corpus_examples == 20
    with pytest.raises(ValueError, match="process 0 of 2 has not finished"):
        shard_io.merge_shards(out)
    engine.run(stream_records(pool), encode, out, manifest={}, process_id=0, num_processes=2)
    assert shard_io.merge_shards(out) == 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path):
    model_dir, sae_dir = sa.write_assets(tmp_path)
    rows = sa.pool_rows(120, seed=4)
    pool = sa.write_pool(tmp_path / "pool.jsonl", rows)
    single, multi = tmp_path / "single", tmp_path / "multi"
    extra = ("--chunk-size", "16")
    sa.run_checked(sa.cli_command(model_dir, sae_dir, pool, single, *extra), sa.subprocess_env())

    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for process_id in range(2):
        command = sa.cli_command(
            model_dir, sae_dir, pool, multi, *extra, "--mesh", "1,2",
            "--coordinator", coordinator, "--num-processes", "2",
            "--process-id", str(process_id),
        )  # fmt: skip
        env = sa.subprocess_env(num_cpu_devices=2)
        procs.append(
            subprocess.Popen(
                command,
                env=env,
                cwd=sa.REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            outputs.append(stdout)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "merged 120 rows" in outputs[0]  # process 0 merges once both are done

    for process_id in range(2):
        shard_rows = [
            json.loads(line)
            for path in sorted((multi / shard_io.SHARD_DIR).glob(f"p{process_id:05d}-c*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        assert [r["index"] % 2 for r in shard_rows] == [process_id] * 60
    run_report = json.loads((multi / "run-p00001.json").read_text())
    assert run_report["mesh"] == {"data": 1, "model": 2}

    single_idx, single_ids, single_scores = sa.read_scores(single / shard_io.MERGED)
    multi_idx, multi_ids, multi_scores = sa.read_scores(multi / shard_io.MERGED)
    assert multi_idx == single_idx == list(range(120))
    assert multi_ids == single_ids == [r["id"] for r in rows]
    assert (single_scores > 0).mean() > 0.5
    np.testing.assert_allclose(multi_scores, single_scores, rtol=1e-5, atol=1e-6)
    chosen_multi = select_top(multi_ids, multi_scores, fraction=0.5).indices
    chosen_single = select_top(single_ids, single_scores, fraction=0.5).indices
    np.testing.assert_array_equal(chosen_multi, chosen_single)


GLOBAL_MESH = """
import json, sys
import jax, numpy as np
from igds_jax import distributed
from models.sharding import local_rows, make_mesh, put_batch, replicate, sharded_jit

process_id, coordinator, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
info = distributed.initialize(coordinator, 2, process_id)
mesh = make_mesh((2, 2))  # spans both processes: 2 local devices each
params = replicate({"w": np.arange(1, 5, dtype=np.float32)}, mesh)
rows = np.arange(8, dtype=np.float32).reshape(2, 4) + 100 * process_id  # this process's rows
fn = sharded_jit(lambda p, b: b["x"] @ p["w"], mesh, params, {"x": 2})
result = local_rows(fn(params, put_batch(mesh, {"x": rows})))
counts = distributed.allgather_int([process_id + 1, 10])
distributed.barrier("done")
result = {"rows": result.tolist(), "counts": counts.tolist()}
result["info"] = [info.process_id, info.num_processes]
json.dump(result, open(out, "w"))
distributed.shutdown()
"""


@pytest.mark.multiprocess
def test_global_mesh_across_processes(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    env = sa.subprocess_env(num_cpu_devices=2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GLOBAL_MESH, str(p), coordinator, str(tmp_path / f"{p}.json")],
            env=env,
            cwd=sa.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for p in range(2)
    ]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    weights = np.arange(1, 5, dtype=np.float32)
    for process_id in range(2):
        result = json.loads((tmp_path / f"{process_id}.json").read_text())
        rows = np.arange(8, dtype=np.float32).reshape(2, 4) + 100 * process_id
        assert result["info"] == [process_id, 2]
        np.testing.assert_allclose(result["rows"], rows @ weights)
        assert result["counts"] == [[1, 10], [2, 10]]
