"""``igds generate``: load a model and answer prompts (a smoke test for any checkpoint)."""

from __future__ import annotations

import argparse
import logging
import time

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="load a model (HF dir, .gguf or hub id) and generate",
        description="Load a model and generate a reply for each prompt.",
    )
    p.add_argument(
        "--model", required=True, help="HF model directory, .gguf file, or hub id (needs network)"
    )
    p.add_argument(
        "--prompt", action="append", required=True, help="a user message; repeat for a batch"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="generation budget per prompt, in tokens (default: 64)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 means greedy (default: 0)",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1)"
    )
    p.add_argument(
        "--no-chat",
        action="store_true",
        help="feed prompts as raw text instead of through the chat template",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="parameter dtype (default: float32)",
    )
    p.set_defaults(func=run)


def encode_prompts(tokenizer, prompts: list[str], chat: bool) -> list[list[int]]:
    if chat and getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
            )
            for text in prompts
        ]
    return [tokenizer(text)["input_ids"] for text in prompts]


def pad_left(rows: list[list[int]], pad_id: int):
    import numpy as np

    t = max(len(r) for r in rows)
    tokens = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        tokens[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
    return tokens, mask


def run(args: argparse.Namespace) -> int:
    from models.generate import generate
    from models.loading import load_model

    model = load_model(args.model, dtype=args.dtype)
    if model.tokenizer is None:
        raise ValueError(f"{args.model}: no tokenizer found next to the weights")
    rows = encode_prompts(model.tokenizer, args.prompt, chat=not args.no_chat)
    tokens, mask = pad_left(rows, model.config.pad_token_id or 0)
    start = time.perf_counter()
    out = generate(
        model.graphdef,
        model.state,
        tokens,
        mask,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    elapsed = time.perf_counter() - start
    for prompt, toks, n in zip(args.prompt, out.tokens, out.lengths, strict=True):
        reply = model.tokenizer.decode(toks[:n], skip_special_tokens=True)
        print(f"> {prompt}\n{reply}\n")
    logger.info("generated %d tokens in %.1f s (compile included)", int(out.lengths.sum()), elapsed)
    return 0
