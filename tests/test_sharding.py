"""Mesh construction, parameter sharding rules, and scoring on 8 CPU devices (4 x 2 mesh)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from igds_jax import tiny_method
from igds_jax.score_fns import frs_params, frs_score_fn
from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
from igds_jax.selection import select_top
from models.config import ModelConfig
from models.loading import load_model
from models.sharding import make_mesh, make_placer, param_partition_spec
from sae import load_sae
from tests import scale_assets as sa
from train.tokenize import encode_example


def test_default_mesh_is_data_parallel():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    assert dict(make_mesh((-1, 1)).shape) == {"data": 1, "model": 1}


@pytest.mark.parametrize(
    "shape, message",
    [((2, 1), "needs 2 devices"), ((0, 1), "invalid"), ((-1, -1), "invalid"), ((1,), "must be")],
)
def test_mesh_shape_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(shape)


RULES = [
    ("layers.0.self_attn.q_proj.kernel", (32, 32), P(None, "model")),
    ("layers.0.self_attn.k_proj.kernel", (32, 16), P(None, "model")),
    ("layers.0.self_attn.q_proj.bias", (32,), P("model")),
    ("layers.0.self_attn.o_proj.kernel", (32, 32), P("model", None)),
    ("layers.0.self_attn.o_proj.bias", (32,), P()),
    ("layers.0.mlp.gate_proj.kernel", (32, 64), P(None, "model")),
    ("layers.0.mlp.up_proj.kernel", (32, 64), P(None, "model")),
    ("layers.0.mlp.down_proj.kernel", (64, 32), P("model", None)),
    ("embed_tokens.weight", (58, 32), P("model", None)),
    ("lm_head.weight", (58, 32), P("model", None)),
    ("embed_tokens.weight", (57, 32), P()),  # odd vocabulary: replicated
    ("embed_positions.weight", (64, 32), P()),
    ("layers.0.input_layernorm.weight", (32,), P()),
    ("layers.0.self_attn.q_norm.weight", (8,), P()),
    ("norm.weight", (32,), P()),
]


@pytest.mark.parametrize("path, shape, expected", RULES)
def test_param_rules(path, shape, expected):
    assert param_partition_spec(path, shape, 2) == expected
    assert param_partition_spec(path, shape, 1) == P()


def test_heads_never_split_with_config():
    # SmolLM2-135M: 9 query heads and 3 key/value heads of width 64.
    cfg = ModelConfig(
        family="llama", vocab_size=49152, d_model=576, n_layers=1, n_heads=9, n_kv_heads=3,
        head_dim=64, d_ff=1536,
    )  # fmt: skip
    k_path = "layers.0.self_attn.k_proj.kernel"
    assert param_partition_spec(k_path, (576, 192), 2) == P(None, "model")
    assert param_partition_spec(k_path, (576, 192), 2, cfg) == P()
    assert param_partition_spec("layers.0.self_attn.o_proj.kernel", (576, 576), 3, cfg) == P(
        "model", None
    )
    assert param_partition_spec("layers.0.mlp.up_proj.kernel", (576, 1536), 2, cfg) == P(
        None, "model"
    )


EIGHT_DEVICES = """
import json, sys
import jax, numpy as np
from flax import nnx
from igds_jax.score_fns import frs_params, frs_score_fn
from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
from models.sharding import make_mesh, make_placer, put_batch
from train.tokenize import encode_example
from models.loading import load_model
from sae import load_sae

model_dir, sae_dir, rows_path, features, out = sys.argv[1:6]
mesh = make_mesh((4, 2))
model = load_model(model_dir, place=make_placer(mesh))
sae_params, sae_cfg = load_sae(sae_dir)
params = frs_params(model.state, sae_params, json.loads(features), mesh)
fn = frs_score_fn(model.graphdef, sae_cfg, model.config.n_layers)
config = ScoringConfig(tokens_per_batch=256, max_tokens=64, bucket_multiple=16)
engine = ScoringEngine(fn, params, ["frs"], mesh, config)
rows = [json.loads(line) for line in open(rows_path)]
examples = [
    encode_example(model.tokenizer, r["prompt"], r["response"], max_tokens=64) for r in rows
]
scores = engine.score_examples(examples)["frs"]
layout = {}
for path, var in nnx.to_flat_state(model.state):
    value = var.get_value()
    layout[".".join(map(str, path))] = {
        "spec": list(value.sharding.spec),
        "shard": list(value.addressable_shards[0].data.shape),
        "devices": len(value.sharding.device_set),
    }
try:
    put_batch(mesh, {"tokens_bt": np.zeros((6, 16), np.int32)})
    uneven = "accepted"
except ValueError as err:
    uneven = str(err)
rows_per_bucket = [r for b in engine.buckets() for r in engine.row_ladder(b)]
result = {"devices": jax.device_count(), "mesh": dict(mesh.shape), "scores": scores.tolist()}
result.update(layout=layout, uneven=uneven, rows_per_bucket=rows_per_bucket)
json.dump(result, open(out, "w"))
"""


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    model_dir, sae_dir = sa.write_assets(root)
    rows = sa.pool_rows(48, seed=2)
    rows_path = sa.write_pool(root / "pool.jsonl", rows)
    out = root / "result.json"
    command = [
        sys.executable, "-c", EIGHT_DEVICES, str(model_dir), str(sae_dir), str(rows_path),
        json.dumps(sa.FEATURES), str(out),
    ]  # fmt: skip
    sa.run_checked(command, sa.subprocess_env(num_cpu_devices=8))
    return model_dir, sae_dir, rows, json.loads(out.read_text())


def one_device_scores(model_dir, sae_dir, rows):
    mesh = make_mesh()
    model = load_model(model_dir, place=make_placer(mesh))
    sae_params, sae_cfg = load_sae(sae_dir)
    params = frs_params(model.state, sae_params, sa.FEATURES, mesh)
    fn = frs_score_fn(model.graphdef, sae_cfg, model.config.n_layers)
    config = ScoringConfig(tokens_per_batch=256, max_tokens=64, bucket_multiple=16)
    engine = ScoringEngine(fn, params, ["frs"], mesh, config)
    examples = [
        encode_example(model.tokenizer, r["prompt"], r["response"], max_tokens=64) for r in rows
    ]
    return engine.score_examples(examples)["frs"], examples


@pytest.mark.slow
def test_params_split_over_model_axis(eight_device_run):
    result = eight_device_run[3]
    layout = result["layout"]
    assert result["devices"] == 8
    assert result["mesh"] == {"data": 4, "model": 2}
    q = layout["layers.1.self_attn.q_proj.kernel"]
    assert q["spec"] == [None, "model"]
    assert q["shard"] == [32, 16]
    assert q["devices"] == 8
    down = layout["layers.0.mlp.down_proj.kernel"]
    assert down["spec"] == ["model", None]
    assert down["shard"] == [32, 32]
    vocab = len(tiny_method.VOCAB)
    embed_shard = [vocab // 2, 32] if vocab % 2 == 0 else [vocab, 32]  # odd: replicated
    assert layout["embed_tokens.weight"]["shard"] == embed_shard
    assert layout["norm.weight"]["spec"] == []
    assert layout["norm.weight"]["shard"] == [32]


@pytest.mark.slow
def test_batch_rows_split_over_data_axis(eight_device_run):
    result = eight_device_run[3]
    assert all(rows % 4 == 0 for rows in result["rows_per_bucket"])
    assert "not a multiple of the 4 data shards" in result["uneven"]


@pytest.mark.slow
def test_eight_devices_match_one_device(eight_device_run):
    model_dir, sae_dir, rows, result = eight_device_run
    sharded = np.asarray(result["scores"])
    single, examples = one_device_scores(model_dir, sae_dir, rows)
    reference = sa.torch_frs(model_dir, examples)
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded, reference, rtol=1e-5, atol=1e-5)
    ids = [r["id"] for r in rows]
    chosen_sharded = select_top(ids, sharded, fraction=0.5).indices
    chosen_single = select_top(ids, single, fraction=0.5).indices
    np.testing.assert_array_equal(chosen_sharded, chosen_single)
