"""Training throughput on CPU: our jitted SFT step against a plain transformers + PyTorch loop.

Model: a small random Llama built with transformers (``--d-model``, ``--layers``, vocab
``--vocab``), saved as safetensors and loaded by both sides, so both start from the same
weights. Batch: ``--batch`` rows of ``--seq-len`` random tokens, no padding. As in SFT, the
first half of each row is the prompt and the loss covers the second half (the response).

Ours: ``train.sft.make_step_functions``' ``train_step`` (the step ``igds finetune`` runs):
float32 forward and backward, response-token mean loss, global-norm clipping at 1.0 and
AdamW, jitted with donated params and optimizer state; the batch is copied from NumPy to the
device every step, as in the training loop.

Reference: ``LlamaForCausalLM`` (float32, SDPA attention) with ``labels`` set to -100 on
prompt tokens, ``loss.backward()``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` with the
same hyperparameters, ``zero_grad(set_to_none=True)``.

Both sides run pinned to the same ``--threads`` cores (``os.sched_setaffinity`` before JAX
and torch start, and ``torch.set_num_threads``). The first losses of both sides are compared
to check that they compute the same thing. After ``--warmup`` untimed steps each (JAX
compiles there), the sides alternate ``--rounds`` rounds of ``--steps`` steps, so a change
in machine load hits both; tokens/s is the median over rounds.

Run: ``python benchmarks/train_throughput.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU cores, both sides"
    )
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
    p.add_argument("--d-model", type=int, default=256, help="residual width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=8, help="query heads (4 key/value heads)")
    p.add_argument("--batch", type=int, default=8, help="rows per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args()


def make_batch(args: argparse.Namespace):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, args.vocab, (args.batch, args.seq_len)).astype(np.int32)
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, args.seq_len // 2 :] = 1.0
    return tokens, loss_mask


def build_reference(args: argparse.Namespace, directory: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.d_model * 8 // 3 // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=max(2048, args.seq_len),
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return model


class TorchLoop:
    def __init__(self, model, tokens, loss_mask):
        import torch

        self.torch = torch
        self.model = model.train()
        self.input_ids = torch.as_tensor(tokens, dtype=torch.long)
        labels = self.input_ids.clone()
        labels[torch.as_tensor(loss_mask) == 0] = -100
        self.labels = labels
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )

    def step(self) -> float:
        out = self.model(input_ids=self.input_ids, labels=self.labels)
        out.loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())


class JaxLoop:
    def __init__(self, directory: str, tokens, loss_mask):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from models.loading import abstract_model, load_model
        from train.config import OptimConfig
        from train.params import flatten_state
        from train.sft import make_optimizer, make_step_functions

        self.jax, self.jnp = jax, jnp
        model = load_model(directory, load_tokenizer=False)
        graphdef, template = abstract_model(model.config, jnp.float32)
        tx = make_optimizer(OptimConfig(grad_clip_norm=1.0, weight_decay=0.0))
        self.fns = make_step_functions(graphdef, template, tx)
        self.params = flatten_state(model.state)
        self.opt_state = tx.init(self.params)
        b, t = tokens.shape
        self.host_batch = {
            "tokens": tokens[None],
            "attention_mask": np.ones((1, b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy(),
            "loss_mask": loss_mask[None],
        }
        # labels are the next tokens, so the loss of token t sits at t (token_losses).
        self.host_batch["loss_mask"][:, :, 0] = 0.0

    def step(self) -> float:
        batch = {k: self.jax.device_put(v) for k, v in self.host_batch.items()}
        self.params, self.opt_state, stats = self.fns.train_step(
            self.params, self.opt_state, {}, batch, self.jnp.float32(1e-4)
        )
        return stats["loss"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(loop, steps: int) -> float:
    start = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = loop.step()
    float(loss)  # wait for the last asynchronous JAX step
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    cores = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cores)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import torch

    torch.set_num_threads(args.threads)
    jax.config.update("jax_default_matmul_precision", "highest")
    tokens, loss_mask = make_batch(args)
    with tempfile.TemporaryDirectory() as directory:
        reference = TorchLoop(build_reference(args, directory), tokens, loss_mask)
        ours = JaxLoop(directory, tokens, loss_mask)

    first = {"ours": float(ours.step()), "reference": reference.step()}
    assert abs(first["ours"] - first["reference"]) < 1e-3, first
    for _ in range(args.warmup - 1):
        float(ours.step())
        reference.step()

    tokens_per_step = args.batch * args.seq_len
    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(args.rounds):
        for name, loop in (("ours", ours), ("reference", reference)):
            rates[name].append(tokens_per_step * args.steps / timed(loop, args.steps))

    n_params = sum(p.numel() for p in reference.model.parameters())
    result = {
        "threads": args.threads,
        "model": {
            "params": n_params,
            "d_model": args.d_model,
            "layers": args.layers,
            "vocab": args.vocab,
        },
        "batch": [args.batch, args.seq_len],
        "first_loss": first,
        "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "rounds": rates,
        "load_average": os.getloadavg(),
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "cpu": cpu_name(),
    }
    ratio = result["tokens_per_s"]["ours"] / result["tokens_per_s"]["reference"]
    result["ratio_ours_over_reference"] = ratio
    print(
        f"model {n_params / 1e6:.1f}M params, batch {args.batch}x{args.seq_len}, "
        f"{args.threads} threads"
    )
    print(f"first-step loss: ours {first['ours']:.5f}, reference {first['reference']:.5f}")
    print(f"ours (JAX train_step):        {result['tokens_per_s']['ours']:9.0f} tokens/s")
    print(f"reference (transformers+torch): {result['tokens_per_s']['reference']:7.0f} tokens/s")
    print(f"ratio ours / reference: {ratio:.2f}")
    print(f"load average during the run: {os.getloadavg()}, CPU: {result['cpu']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
