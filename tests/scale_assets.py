"""Shared set-up of the scale tests: a tiny model and SAE on disk, pools, references, CLI runs.

The model is the tiny HF Llama checkpoint of ``igds_jax.tiny_method`` (2 layers, d_model 32,
4 query and 2 key/value heads, a word-level tokenizer). The SAE is a random JumpReLU SAE
at ``blocks.1.hook_resid_post``, so scoring runs both blocks. The reference FRS comes from
the HF transformers model (PyTorch) on each unpadded example and the NumPy SAE formulas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from igds_jax import tiny_method
from sae import SAEConfig, params_from_arrays, save_saelens
from tests.sae_reference import np_encode, random_arrays

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_post"
LAYER = 1
D_SAE = 24
FEATURES = [0, 3, 5, 8, 13, 21]
SCORE_ARGS = [
    "--max-tokens",
    "64",
    "--bucket-multiple",
    "16",
    "--tokens-per-batch",
    "256",
]


def sae_arrays(seed: int = 3) -> dict[str, np.ndarray]:
    arrays = random_arrays(tiny_method.D_MODEL, D_SAE, seed)
    arrays["threshold"] = np.full(D_SAE, 0.05, np.float32)  # fire on about half the tokens
    return arrays


def sae_config() -> SAEConfig:
    return SAEConfig(architecture="jumprelu", d_in=tiny_method.D_MODEL, d_sae=D_SAE, hook_name=HOOK)


def write_assets(directory: Path) -> tuple[Path, Path]:
    """Write the model (with tokenizer) and the SAE; return their directories."""
    model_dir = tiny_method.write_model(directory / "model")
    cfg = sae_config()
    params = params_from_arrays(sae_arrays(), cfg, "random")
    sae_dir = save_saelens(params, cfg, directory / "sae")
    return model_dir, Path(sae_dir)


def pool_rows(n: int, *, seed: int = 0, words_per_side: tuple[int, int] = (2, 30)) -> list[dict]:
    """Rows of random vocabulary words with lengths spread over several buckets."""
    rng = np.random.default_rng(seed)
    words = np.asarray(tiny_method.WORDS)
    rows = []
    for i in range(n):
        lo, hi = words_per_side
        prompt = " ".join(rng.choice(words, size=rng.integers(lo, hi + 1)))
        response = " ".join(rng.choice(words, size=rng.integers(lo, hi + 1)))
        rows.append({"id": f"x{i}", "prompt": prompt, "response": response})
    return rows


def write_pool(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def torch_frs(model_dir: Path, examples, features=FEATURES) -> np.ndarray:
    """FRS (sum over non-BOS tokens and features) from HF transformers and NumPy formulas."""
    import torch
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    captured = {}

    def keep_output(module, args, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output

    handle = hf.model.layers[LAYER].register_forward_hook(keep_output)
    arrays = sae_arrays()
    scores = []
    try:
        for example in examples:
            with torch.no_grad():
                hf(torch.as_tensor(example.input_ids[None], dtype=torch.long))
            acts_td = captured["x"][0].numpy()
            f_tf = np_encode(arrays, "jumprelu", acts_td)[:, features]
            scores.append(f_tf[example.token_mask].sum())
    finally:
        handle.remove()
    return np.asarray(scores)


def torch_response_loss(model_dir: Path, examples) -> np.ndarray:
    """Mean cross-entropy of each example's response tokens under the HF model (PyTorch)."""
    import torch
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    losses = []
    for example in examples:
        ids = torch.as_tensor(example.input_ids[None], dtype=torch.long)
        with torch.no_grad():
            logits = hf(ids).logits[0, :-1]
        token_loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        counted = torch.as_tensor(example.response_mask[1:])
        losses.append(float(token_loss[counted].mean()))
    return np.asarray(losses)


def read_scores(path: Path, name: str = "frs") -> tuple[list[int], list[str], np.ndarray]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return (
        [r["index"] for r in rows],
        [r["id"] for r in rows],
        np.asarray([r[name] for r in rows]),
    )


def cli_command(model_dir: Path, sae_dir: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "igds_jax.cli",
        "score-shard",
        "--model",
        str(model_dir),
        "--sae",
        str(sae_dir),
        "--features",
        ",".join(map(str, FEATURES)),
        "--pool",
        str(pool),
        "--out",
        str(out),
        *SCORE_ARGS,
        *extra,
    ]


def subprocess_env(num_cpu_devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_cpu_devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    # the test session computes float32 matmuls at full precision; so do the subprocesses
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def run_checked(command: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(command[:4])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    )
    return result.stdout
