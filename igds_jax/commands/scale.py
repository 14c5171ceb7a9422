"""``igds score-shard`` and ``igds merge``: scoring of a large pool, resumable, multi-host.

``score-shard`` scores this process's share of the pool into shard files under ``--out``
and, unless ``--no-merge``, merges every process's shards into ``<out>/scores.jsonl`` once
all processes are done (process 0 merges, the others wait at a barrier). Rerunning the same
command after a crash resumes from the finished shards. ``merge`` merges a finished run
whose processes ran with ``--no-merge`` or on hosts without a shared file system (copy every
``shards/`` directory into one first).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score-shard",
        help="score a pool with FRS or Loss into resumable shard files (one process of a run)",
        description="Score this process's share of a pool with the Feature-Resonant Score "
        "(or the Loss baseline) and write resumable shard files. With several processes, "
        "start one per host with the same arguments and its own --process-id.",
    )
    p.add_argument(
        "--method",
        default="frs",
        choices=["frs", "loss"],
        help="frs: SAE feature score (needs --sae and --features); loss: mean response-token "
        "loss under the model",
    )
    p.add_argument("--model", required=True, help="HF model directory or .gguf file")
    p.add_argument("--dtype", default="float32", help="model dtype: float32 | bfloat16")
    p.add_argument("--sae", default=None, help="SAE directory (SAELens, Llama Scope) or .npz")
    p.add_argument(
        "--features",
        default=None,
        help="feature ids to score with: comma-separated ('12,40,7') or a JSON file holding a "
        "list or an object with a 'features' list",
    )
    p.add_argument("--hook", default=None, help="hook point; default: the SAE's hook_name")
    p.add_argument(
        "--aggregate",
        default="sum",
        choices=["sum", "mean", "max"],
        help="how per-token values combine into one score",
    )
    p.add_argument(
        "--tokens",
        default="all",
        choices=["all", "response"],
        help="tokens scored: all (without a leading BOS) or response",
    )
    p.add_argument("--pool", required=True, help="pool file (jsonl, json, csv, parquet)")
    p.add_argument("--prompt-field", default="prompt", help="field holding the prompt")
    p.add_argument("--response-field", default="response", help="field holding the response")
    p.add_argument("--id-field", default="id", help="field holding the example id")
    p.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "on", "off"],
        help="wrap examples in the tokenizer's chat template (auto: when it has one)",
    )
    p.add_argument("--out", required=True, help="output directory of the run")
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="truncate examples to this many tokens"
    )
    p.add_argument("--chunk-size", type=int, default=2048, help="examples per shard file")
    p.add_argument(
        "--tokens-per-batch", type=int, default=16384, help="padded tokens per compiled call"
    )
    p.add_argument("--bucket-multiple", type=int, default=64, help="padded length step")
    p.add_argument(
        "--bucket-scheme", default="multiple", choices=["multiple", "pow2"], help="length steps"
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="local mesh shape DATA,MODEL (default: every local device on data)",
    )
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    p.add_argument("--process-id", type=int, default=None, help="this process's id (0-based)")
    p.add_argument("--no-merge", action="store_true", help="leave merging to 'igds merge'")
    p.set_defaults(func=run_score_shard)

    m = sub.add_parser(
        "merge",
        help="merge the shard files of a finished scoring run",
        description="Merge every process's shards of a scoring run into one JSONL file "
        "sorted by example index; fails if a process has not finished.",
    )
    m.add_argument("--out", required=True, help="output directory of the scoring run")
    m.add_argument("--output", default=None, help="merged file (default: <out>/scores.jsonl)")
    m.set_defaults(func=run_merge)


def parse_features(text: str) -> list[int]:
    """Feature ids from ``'1,2,3'`` or a JSON file (a list, or ``{"features": [...]}``)."""
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"features file {path} not found")
        value = json.loads(path.read_text())
        if isinstance(value, dict):
            value = value.get("features")
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise ValueError(
                f"{path}: expected a list of integer feature ids or {{'features': [...]}}"
            )
        return value
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--features {text!r} is not a comma-separated list of integers") from None


def parse_mesh(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        data, model = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--mesh {text!r} must be DATA,MODEL, e.g. 4,2 or -1,2") from None
    return data, model


def run_score_shard(args: argparse.Namespace) -> int:
    # jax.distributed must start before any other JAX call.
    from igds_jax import distributed

    process = distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax

    from igds_jax import shard_io
    from igds_jax.corpus_stream import corpus_fingerprint, stream_records
    from igds_jax.scoring_engine import ScoringConfig, ScoringEngine
    from models.loading import load_model
    from models.sharding import make_mesh, make_placer
    from train.records import FieldNames
    from train.tokenize import encode_example

    start = time.perf_counter()
    mesh = make_mesh(parse_mesh(args.mesh), devices=jax.local_devices())
    model = load_model(args.model, dtype=args.dtype, place=make_placer(mesh))
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer; score-shard needs one to encode text")
    score_fn, params, manifest = build_scorer(args, model, mesh)
    tokenizer = model.tokenizer
    config = ScoringConfig(
        chunk_size=args.chunk_size,
        tokens_per_batch=args.tokens_per_batch,
        max_tokens=args.max_tokens,
        bucket_multiple=args.bucket_multiple,
        bucket_scheme=args.bucket_scheme,
        pad_id=_pad_id(tokenizer, model.config.pad_token_id),
    )
    engine = ScoringEngine(score_fn, params, [args.method], mesh, config)
    use_template = {"auto": None, "on": True, "off": False}[args.chat_template]

    def encode(record):
        return encode_example(
            tokenizer,
            record.prompt,
            record.response,
            max_tokens=args.max_tokens,
            use_chat_template=use_template,
        )

    fields = FieldNames(args.prompt_field, args.response_field, args.id_field or None)
    manifest.update(
        pool=corpus_fingerprint(args.pool),
        fields=[fields.prompt, fields.response, fields.id],
        max_tokens=args.max_tokens,
        chat_template=args.chat_template,
    )
    summary = engine.run(
        stream_records(args.pool, fields=fields),
        encode,
        args.out,
        manifest=manifest,
        process_id=process.process_id,
        num_processes=process.num_processes,
    )
    out = Path(args.out)
    report = {
        "process_id": process.process_id,
        "num_processes": process.num_processes,
        "mesh": dict(mesh.shape),
        "summary": summary.__dict__,
        "tokens_per_second": summary.tokens_per_second,
        "seconds_total": time.perf_counter() - start,
    }
    shard_io.atomic_write(
        out / f"run-p{process.process_id:05d}.json", json.dumps(report, indent=2).encode()
    )
    print(
        f"process {process.process_id}: scored {summary.num_scored} examples, resumed "
        f"{summary.num_resumed}, {summary.tokens_per_second:.0f} tokens/s"
    )
    if not args.no_merge:
        distributed.barrier("igds-score-shard-done")
        if process.is_main:
            count = shard_io.merge_shards(out)
            print(f"merged {count} rows into {out / shard_io.MERGED}")
        distributed.barrier("igds-score-shard-merged")
    distributed.shutdown()
    return 0


def build_scorer(args: argparse.Namespace, model, mesh) -> tuple:
    """Return ``(score_fn, params, manifest entries)`` for ``--method``."""
    from igds_jax.score_fns import frs_params, frs_score_fn, loss_score_fn
    from sae import check_hook_dim, load_sae

    manifest = {"method": args.method, "model": Path(args.model).name, "dtype": args.dtype}
    if args.method == "loss":
        return loss_score_fn(model.graphdef), {"model": model.state}, manifest
    if args.sae is None or args.features is None:
        raise ValueError("--method frs needs --sae and --features")
    features = parse_features(args.features)
    sae_params, sae_cfg = load_sae(args.sae)
    hook = args.hook or sae_cfg.hook_name
    if not hook:
        raise ValueError(f"{args.sae} names no hook point; pass --hook")
    check_hook_dim(sae_cfg, model.config.d_model)
    score_fn = frs_score_fn(
        model.graphdef,
        sae_cfg,
        model.config.n_layers,
        hook_name=hook,
        aggregate=args.aggregate,
        tokens=args.tokens,
    )
    manifest.update(
        sae=Path(args.sae).name,
        hook=hook,
        features=features,
        aggregate=args.aggregate,
        tokens=args.tokens,
    )
    return score_fn, frs_params(model.state, sae_params, features, mesh), manifest


def _pad_id(tokenizer, model_pad_id: int | None) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), model_pad_id):
        if value is not None:
            return int(value)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from igds_jax import shard_io

    out = Path(args.out)
    destination = Path(args.output) if args.output else out / shard_io.MERGED
    count = shard_io.merge_shards(out, destination)
    print(f"merged {count} rows into {destination}")
    return 0
