"""FRS scoring throughput on one accelerator in bfloat16, with the achieved fraction of peak.

Prepared for one NVIDIA H200. It scores (a) fixed-length batches and (b) a pool of mixed
short and long examples with the scoring engine. It prints tokens/s, the useful FLOP/s
(``flops.scoring_flops``) and their fraction of two ceilings: the datasheet's dense bf16
rate (``--peak-tflops``) and a bf16 matrix product measured on the device first.

The model has the shapes of SmolLM2-135M-Instruct (``--config smollm2-135m``) or of a
1B-class Llama (``--config llama-1b``) with random weights: the throughput depends only on
the shapes, and the accelerator machine cannot fetch the packaged GGUF. The SAE is a random
JumpReLU SAE of width 16384 at the middle layer, scoring 16 features. Token ids and lengths
are random: (b) draws 60% of lengths around 60 tokens and 40% around 600, capped at
``--max-tokens``.

Run on the accelerator: ``python benchmarks/gpu_scoring.py`` (a few minutes, most of it
compilation). ``--dry-run`` runs tiny sizes on CPU to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when not installed

from flops import scoring_flops  # noqa: E402

D_SAE = 16384
NUM_FEATURES = 16
# Dense bf16 FLOP/s by device kind, from the vendors' datasheets (SXM parts).
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="smollm2-135m", choices=["smollm2-135m", "llama-1b"])
    p.add_argument("--fixed-len", type=int, default=512, help="(a): tokens per example")
    p.add_argument("--fixed-count", type=int, default=4096, help="(a): examples")
    p.add_argument("--natural-count", type=int, default=8192, help="(b): examples")
    p.add_argument("--max-tokens", type=int, default=1024, help="(b): longest example")
    p.add_argument(
        "--tokens-per-batch", type=int, default=131072, help="padded tokens per compiled call"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="datasheet bf16 TFLOP/s")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    p.add_argument("--json", default=None, help="write results here (default: $OUT/...)")
    args = p.parse_args()
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        args.fixed_len, args.fixed_count, args.natural_count = 32, 16, 24
        args.max_tokens, args.tokens_per_batch = 128, 1024
    return args


def model_config(name: str, dry_run: bool):
    from models.config import ModelConfig

    if dry_run:
        return ModelConfig(
            family="llama", vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2,
            head_dim=16, d_ff=128,
        )  # fmt: skip
    if name == "smollm2-135m":
        return ModelConfig(
            family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
            n_kv_heads=3, head_dim=64, d_ff=1536,
        )  # fmt: skip
    return ModelConfig(
        family="llama", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
        head_dim=64, d_ff=8192,
    )  # fmt: skip


def natural_lengths(count: int, max_tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    short = rng.lognormal(np.log(60), 0.5, count)
    long = rng.lognormal(np.log(600), 0.4, count)
    lengths = np.where(rng.random(count) < 0.6, short, long)
    return np.clip(lengths.astype(int), 8, max_tokens)


def measured_matmul_tflops(jax, jnp, n: int) -> float:
    a = jnp.ones((n, n), jnp.bfloat16)
    dot = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        dot(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = dot(a, a)
    out.block_until_ready()
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def main() -> int:
    args = parse_args()
    import jax
    import jax.numpy as jnp

    from igds_jax.score_fns import frs_params, frs_score_fn
    from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
    from models.loading import init_model
    from models.sharding import make_mesh, shard_state
    from sae import SAEConfig, params_from_arrays
    from train.tokenize import EncodedExample

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    peak = args.peak_tflops or next((v for k, v in DATASHEET_TFLOPS.items() if k in kind), None)
    measured = measured_matmul_tflops(jax, jnp, 1024 if args.dry_run else 8192)
    print(f"device: {kind} x{jax.device_count()}; bf16 matmul {measured:.2f} TFLOP/s measured")

    # model and SAE with random weights.
    cfg = model_config(args.config, args.dry_run)
    layer = cfg.n_layers // 2
    mesh = make_mesh()
    graphdef, state = init_model(cfg, dtype="bfloat16")
    state = shard_state(state, mesh, cfg)
    rng = np.random.default_rng(0)
    d_sae = 256 if args.dry_run else D_SAE
    sae_cfg = SAEConfig(
        architecture="jumprelu", d_in=cfg.d_model, d_sae=d_sae, dtype="bfloat16",
        hook_name=f"blocks.{layer}.hook_resid_post", apply_b_dec_to_input=False,
    )  # fmt: skip
    arrays = {
        "W_enc": rng.normal(size=(cfg.d_model, d_sae)) / np.sqrt(cfg.d_model),
        "b_enc": np.zeros(d_sae),
        "W_dec": rng.normal(size=(d_sae, cfg.d_model)) / np.sqrt(cfg.d_model),
        "b_dec": np.zeros(cfg.d_model),
        "threshold": np.full(d_sae, 0.5),
    }
    sae_params = params_from_arrays(arrays, sae_cfg, "random")
    features = rng.choice(d_sae, NUM_FEATURES, replace=False)
    params = frs_params(state, sae_params, features, mesh)
    score_fn = frs_score_fn(graphdef, sae_cfg, cfg.n_layers)
    results = {"device": kind, "devices": jax.device_count(), "config": args.config}
    results["matmul_tflops_measured"] = measured
    results["peak_tflops_datasheet"] = peak

    def run(name: str, lengths: np.ndarray, max_tokens: int, scheme: str) -> None:
        config = ScoringConfig(
            tokens_per_batch=args.tokens_per_batch,
            max_tokens=max_tokens,
            bucket_multiple=128 if not args.dry_run else 16,
            bucket_scheme=scheme,
        )
        engine = ScoringEngine(score_fn, params, ["frs"], mesh, config)

        # random token ids of the requested lengths.
        ones = [np.ones(n, bool) for n in lengths]
        examples = [
            EncodedExample(rng.integers(0, cfg.vocab_size, n).astype(np.int32), m, m, 0, False)
            for n, m in zip(lengths, ones, strict=True)
        ]

        # compile every shape, then time one pass.
        start = time.perf_counter()
        num_shapes = engine.warm_up(lengths)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        engine.score_examples(examples)
        seconds = time.perf_counter() - start

        tokens = int(lengths.sum())
        flops = scoring_flops(lengths, cfg, layer + 1, NUM_FEATURES)
        row = {
            "examples": len(lengths),
            "tokens": tokens,
            "seconds": seconds,
            "compiled_shapes": num_shapes,
            "compile_seconds": compile_s,
            "tokens_per_s": tokens / seconds,
            "tflops": flops / seconds / 1e12,
            "fraction_of_measured_matmul": flops / seconds / 1e12 / measured,
        }
        if peak:
            row["fraction_of_datasheet_peak"] = flops / seconds / 1e12 / peak
        results[name] = row
        print(
            f"{name}: {len(lengths)} examples, {tokens} tokens in {seconds:.2f} s ({num_shapes} "
            f"shapes compiled in {compile_s:.1f} s): {row['tokens_per_s']:.0f} tok/s, "
            f"{row['tflops']:.2f} TFLOP/s = {row['fraction_of_measured_matmul']:.1%} of the "
            f"measured matmul"
            + (f", {row['fraction_of_datasheet_peak']:.1%} of {peak:.0f}" if peak else ""),
            flush=True,
        )

    run("fixed", np.full(args.fixed_count, args.fixed_len), args.fixed_len, "multiple")
    run("natural", natural_lengths(args.natural_count, args.max_tokens), args.max_tokens, "pow2")

    out = args.json or (
        os.path.join(os.environ["OUT"], "gpu_scoring.json") if "OUT" in os.environ else None
    )
    if out:
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
