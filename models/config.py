"""The one configuration every model family converts to.

A family module (``models/llama.py``, ``models/gemma2.py``, ...) turns an HF
``config.json`` into a :class:`ModelConfig`; the shared decoder in
``models/transformer.py`` reads only this class. The config is frozen and hashable, so it
can sit inside a static ``GraphDef`` under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

NORM_TYPES = ("rms", "rms_gemma", "layernorm")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
LAYER_TYPES = ("full", "sliding")
ROPE_TYPES = ("default", "llama3", "linear")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one attention kind."""

    theta: float = 10000.0  # base of the inverse frequencies
    rope_type: str = "default"  # default | llama3 | linear
    factor: float = 1.0  # llama3 and linear: context extension factor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope type {self.rope_type!r} is not supported; supported: {ROPE_TYPES}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Shape and quirks of a decoder-only language model."""

    family: str  # llama | qwen3 | gemma2 | gemma3 | gpt2
    vocab_size: int
    d_model: int  # residual stream width
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (grouped-query attention when < n_heads)
    head_dim: int
    d_ff: int  # MLP hidden width
    norm_eps: float = 1e-6
    norm_type: str = "rms"  # rms: w * x_hat; rms_gemma: (1 + w) * x_hat; layernorm: GPT-2
    act: str = "silu"  # MLP nonlinearity
    gated_mlp: bool = True  # down(act(gate(x)) * up(x)) vs c_proj(act(c_fc(x)))
    learned_positions: bool = False  # GPT-2's absolute position table instead of RoPE
    max_positions: int = 2048  # learned position table size; a bound on generation
    rope: RopeConfig = field(default_factory=RopeConfig)  # full-attention layers
    rope_local: RopeConfig | None = None  # sliding layers when they use another base
    layer_types: tuple[str, ...] = ()  # per layer: full | sliding
    sliding_window: int | None = None  # keys within this many slots of the query
    qk_norm: bool = False  # RMSNorm on each head's q and k before RoPE (Qwen3, Gemma-3)
    sandwich_norm: bool = False  # Gemma-2/3: extra norms after attention and MLP
    embed_scale: bool = False  # Gemma: embeddings times sqrt(d_model)
    attn_softcap: float | None = None  # Gemma-2: cap * tanh(scores / cap)
    final_softcap: float | None = None  # Gemma-2: same on the logits
    query_pre_attn_scalar: float | None = None  # scores scaled by this ** -0.5
    tie_embeddings: bool = True  # lm_head shares the embedding matrix
    qkv_bias: bool = False  # biases on q/k/v projections
    o_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False  # biases on the MLP projections
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full",) * self.n_layers)
        problems = []
        if self.norm_type not in NORM_TYPES:
            problems.append(f"norm_type={self.norm_type!r} (supported: {NORM_TYPES})")
        if self.act not in ACTIVATIONS:
            problems.append(f"act={self.act!r} (supported: {ACTIVATIONS})")
        if len(self.layer_types) != self.n_layers:
            problems.append(
                f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers"
            )
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            problems.append(f"layer_types {bad} (supported: {LAYER_TYPES})")
        if "sliding" in self.layer_types and not self.sliding_window:
            problems.append("sliding layers need sliding_window > 0")
        if self.n_heads % self.n_kv_heads:
            problems.append(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def attn_scale(self) -> float:
        """Multiplier of q.k scores."""
        base = self.query_pre_attn_scalar or self.head_dim
        return float(base) ** -0.5

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)
