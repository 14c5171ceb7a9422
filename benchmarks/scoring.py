"""FRS scoring throughput on CPU: our JAX scoring engine against a careful PyTorch reference.

Model: SmolLM2-135M-Instruct (the packaged GGUF, dequantized to float32). SAE: a random
JumpReLU SAE of width 4096 at ``blocks.15.hook_resid_post`` (the middle of 30 layers). The
score is the FRS over 16 features, so both sides run blocks 0..15 and encode 16 features.

Reference: the HF model from transformers' own GGUF loader (float32, SDPA attention), its
layer list cut after the SAE layer, a forward hook reading that layer's output, the same
16-feature JumpReLU encode in torch, run under ``torch.inference_mode``. Batches have a
fixed number of rows, in corpus order, padded on the right to the longest sequence of each
batch (what ``tokenizer(..., padding=True)`` gives).

Ours: ``igds_jax.scoring_engine.ScoringEngine`` with ``igds_jax.score_fns.frs_score_fn``,
which buckets examples by length into fixed padded shapes.

Workloads:

- (a) fixed length: random token ids, every example the same length (pure compute);
- (b) natural lengths: real documents of mixed lengths (sae-probes news headlines and
  reviews, CHAMP math solutions, Shakespeare passages) in a shuffled order.

Both sides get the same token ids and thread count; compilation and the first torch batch
are excluded by a warm-up pass. Run: ``python benchmarks/scoring.py`` (about 10 minutes on
2 cores); ``--quick`` shrinks every size for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from flops import scoring_flops

logger = logging.getLogger(__name__)

LAYER = 15
D_SAE = 4096
NUM_FEATURES = 16


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU cores, both sides"
    )
    p.add_argument("--fixed-len", type=int, default=256, help="(a): tokens per example")
    p.add_argument("--fixed-count", type=int, default=64, help="(a): examples")
    p.add_argument("--natural-count", type=int, default=96, help="(b): examples")
    p.add_argument("--max-tokens", type=int, default=512, help="(b): truncation length")
    p.add_argument("--rows", type=int, default=16, help="torch batch rows")
    p.add_argument("--bucket-multiple", type=int, default=32, help="(b): ours, length step")
    p.add_argument("--tokens-per-batch", type=int, default=4096, help="ours: padded tokens/call")
    p.add_argument("--scale-count", type=int, default=16, help="1x corpus for the 1/4/16x run")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.fixed_len, args.fixed_count, args.natural_count = 64, 8, 12
        args.max_tokens, args.scale_count = 128, 2
    return args


def configure_threads(threads: int) -> None:
    """Pin this process to ``threads`` cores, so XLA's and torch's pools have the same size."""
    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import torch

    torch.set_num_threads(threads)


def natural_texts(count: int, seed: int = 0) -> list[str]:
    """Mixed short and long real documents, shuffled."""
    from igds_jax import text_sources

    short = [text for text, _ in text_sources.read_probe_dataset("161_agnews_0")[: count // 2]]
    reviews = [text for text, _ in text_sources.read_probe_dataset("157_amazon_5star")]
    champ = text_sources.champ_documents()
    works = text_sources.shakespeare_works()
    passages = ["\n".join(work.lines[start : start + 40]) for work in works for start in (200, 600)]
    long = champ[: count // 4] + passages[: count // 8] + reviews[: count // 8]
    texts = (short + long)[:count]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.permutation(len(texts))]


def random_sae(d_model: int, seed: int = 0):
    from sae import SAEConfig, params_from_arrays

    rng = np.random.default_rng(seed)
    arrays = {
        "W_enc": (rng.normal(size=(d_model, D_SAE)) / np.sqrt(d_model)).astype(np.float32),
        "b_enc": np.zeros(D_SAE, np.float32),
        "W_dec": (rng.normal(size=(D_SAE, d_model)) / np.sqrt(d_model)).astype(np.float32),
        "b_dec": np.zeros(d_model, np.float32),
        "threshold": np.full(D_SAE, 0.5, np.float32),
    }
    cfg = SAEConfig(
        architecture="jumprelu",
        d_in=d_model,
        d_sae=D_SAE,
        hook_name=f"blocks.{LAYER}.hook_resid_post",
        apply_b_dec_to_input=False,
    )
    features = rng.choice(D_SAE, NUM_FEATURES, replace=False).astype(np.int32)
    return arrays, params_from_arrays(arrays, cfg, "random"), cfg, features


def encoded(ids_list: list[list[int]]):
    from train.tokenize import EncodedExample

    out = []
    for ids in ids_list:
        array = np.asarray(ids, np.int32)
        ones = np.ones(array.shape, bool)
        out.append(EncodedExample(array, ones, ones, 0, False))
    return out


class TorchReference:
    """The HF model cut after the SAE layer, scoring padded batches in corpus order."""

    def __init__(self, gguf_path: Path, arrays: dict, features: np.ndarray, pad_id: int):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
        hf.model.layers = hf.model.layers[: LAYER + 1]
        self.base = hf.model
        self.pad_id = pad_id
        self.captured = {}
        hf.model.layers[LAYER].register_forward_hook(self._keep)
        self.w_enc = torch.as_tensor(arrays["W_enc"][:, features])
        self.b_enc = torch.as_tensor(arrays["b_enc"][features])
        self.threshold = torch.as_tensor(arrays["threshold"][features])

    def _keep(self, module, args, output):
        self.captured["h"] = output[0] if isinstance(output, tuple) else output

    def score(self, ids_list: list[list[int]], rows: int) -> np.ndarray:
        torch = self.torch
        scores = []
        with torch.inference_mode():
            for start in range(0, len(ids_list), rows):
                chunk = ids_list[start : start + rows]
                width = max(len(ids) for ids in chunk)
                tokens = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):
                    tokens[row, : len(ids)] = torch.as_tensor(ids)
                    mask[row, : len(ids)] = 1
                self.base(input_ids=tokens, attention_mask=mask)
                pre = self.captured["h"] @ self.w_enc + self.b_enc
                acts = torch.relu(pre) * (pre > self.threshold)
                scores.append((acts.sum(-1) * mask).sum(-1).numpy())
        return np.concatenate(scores)


def matmul_gflops(threads: int) -> dict[str, float]:
    """Best-of-5 float32 GEMM rate (2048^3) of XLA and of torch on this machine."""
    import jax
    import jax.numpy as jnp
    import torch

    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    dot(a, a).block_until_ready()
    best = min(_timed(lambda: dot(a, a).block_until_ready()) for _ in range(5))
    ta = torch.ones((n, n))
    torch.mm(ta, ta)
    best_torch = min(_timed(lambda: torch.mm(ta, ta)) for _ in range(5))
    return {"xla": 2 * n**3 / best / 1e9, "torch": 2 * n**3 / best_torch / 1e9}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    args = parse_args()
    configure_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    import jax

    from igds_jax.assets import smollm2_gguf_path
    from igds_jax.score_fns import frs_params, frs_score_fn
    from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
    from models.loading import load_model
    from models.sharding import make_mesh, make_placer

    gguf = smollm2_gguf_path()
    mesh = make_mesh()
    model = load_model(gguf, place=make_placer(mesh))
    cfg = model.config
    arrays, sae_params, sae_cfg, features = random_sae(cfg.d_model)
    score_fn = frs_score_fn(model.graphdef, sae_cfg, cfg.n_layers)
    params = frs_params(model.state, sae_params, features, mesh)
    pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    reference = TorchReference(gguf, arrays, features, pad_id)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "load_average_at_start": os.getloadavg()[0],
        "jax": jax.__version__,
        "matmul_gflops": matmul_gflops(args.threads),
    }

    def engine_for(max_tokens: int, multiple: int) -> ScoringEngine:
        config = ScoringConfig(
            tokens_per_batch=args.tokens_per_batch,
            max_tokens=max_tokens,
            bucket_multiple=multiple,
            pad_id=pad_id,
        )
        return ScoringEngine(score_fn, params, ["frs"], mesh, config)

    def compare(name: str, ids_list: list[list[int]], engine: ScoringEngine) -> dict:
        examples = encoded(ids_list)
        lengths = np.asarray([len(ids) for ids in ids_list])
        engine.warm_up(lengths)

        start = time.perf_counter()
        ours = engine.score_examples(examples)["frs"]
        ours_s = time.perf_counter() - start

        reference.score(ids_list[: args.rows], args.rows)  # warm-up
        start = time.perf_counter()
        ref = reference.score(ids_list, args.rows)
        ref_s = time.perf_counter() - start

        tokens = int(lengths.sum())
        row = {
            "examples": len(ids_list),
            "tokens": tokens,
            "mean_len": float(lengths.mean()),
            "max_len": int(lengths.max()),
            "ours_tokens_per_s": tokens / ours_s,
            "torch_tokens_per_s": tokens / ref_s,
            "ratio": ref_s / ours_s,
            "ours_gflops": scoring_flops(lengths, cfg, LAYER + 1, NUM_FEATURES) / ours_s / 1e9,
            "max_rel_diff": float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1.0))),
        }
        print(
            f"{name}: {len(ids_list)} examples, {tokens} tokens (mean {row['mean_len']:.0f}, "
            f"max {row['max_len']}): ours {row['ours_tokens_per_s']:.0f} tok/s, torch "
            f"{row['torch_tokens_per_s']:.0f} tok/s, ratio {row['ratio']:.2f}; ours "
            f"{row['ours_gflops']:.1f} GFLOP/s; max rel diff {row['max_rel_diff']:.1e}",
            flush=True,
        )
        return row

    mm = results["matmul_gflops"]
    print(f"float32 matmul 2048^3: XLA {mm['xla']:.1f} GFLOP/s, torch {mm['torch']:.1f} GFLOP/s")

    # (a) fixed length.
    rng = np.random.default_rng(0)
    fixed = [
        rng.integers(0, cfg.vocab_size, args.fixed_len).tolist() for _ in range(args.fixed_count)
    ]
    results["fixed"] = compare("(a) fixed length", fixed, engine_for(args.fixed_len, 64))

    # (b) natural lengths.
    tok = model.tokenizer
    texts = natural_texts(args.natural_count)
    natural = [
        tok(text, truncation=True, max_length=args.max_tokens)["input_ids"] for text in texts
    ]
    natural_engine = engine_for(args.max_tokens, args.bucket_multiple)
    results["natural"] = compare("(b) natural lengths", natural, natural_engine)

    # streaming runs at 1x, 4x and 16x the corpus, shard files included; every batch shape
    # the three runs use is compiled first.
    scale_ids = natural[: args.scale_count]
    for factor in (1, 4, 16):
        natural_engine.warm_up(np.asarray([len(ids) for ids in scale_ids * factor]))
    results["scaling"] = {}
    for factor in (1, 4, 16):
        items = [(i, f"x{i}", ids) for i, ids in enumerate(scale_ids * factor)]
        with tempfile.TemporaryDirectory() as out:
            summary = natural_engine.run(
                items, lambda ids: encoded([ids])[0], out, manifest={"factor": factor}
            )
        results["scaling"][f"{factor}x"] = {
            "examples": len(items),
            "seconds": summary.seconds,
            "tokens_per_s": summary.tokens_per_second,
        }
        print(
            f"streaming run {factor}x: {len(items)} examples, {summary.seconds:.1f} s, "
            f"{summary.tokens_per_second:.0f} tok/s",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
