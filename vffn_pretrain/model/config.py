"""`model.*` config group: the transformer's shape (the FFN's own choices live in `ffn.*`)."""

from __future__ import annotations

from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model.counting import padded_vocab_size


@dataclass
class ModelConfig:
    """Validated `model.*` keys. The block is OLMo-style: pre-norm RMSNorm, RoPE, SwiGLU, no biases, untied."""

    name: str = "tiny"
    num_layers: int = 4
    hidden_size: int = 128
    ffn_hidden_size: int | None = None  # default 4 * hidden_size (docs/method.md §12 #1)
    num_attention_heads: int = 4
    num_query_groups: int | None = None  # GQA groups; None = multi-head attention
    vocab_size: int = 8192  # the tokenizer's vocabulary; the embedding is padded (see padded_vocab_size)
    max_position_embeddings: int = 4096
    rotary_base: int = 10000
    norm_epsilon: float = 1e-6
    init_std: float = 0.02  # truncated normal at +-3 std for every linear (docs/method.md §8)
    tied_embeddings: bool = False
    make_vocab_size_divisible_by: int = 128

    def __post_init__(self):
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size

    def validate(self, tp: int = 1) -> None:
        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{key}", f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                "model.num_attention_heads",
                f"model.hidden_size={self.hidden_size} is not divisible by {self.num_attention_heads} heads",
            )
        if self.num_attention_heads % tp:
            raise ConfigError(
                "model.num_attention_heads",
                f"{self.num_attention_heads} heads are not divisible by parallel.tp={tp}",
            )
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups or groups % tp:
            raise ConfigError(
                "model.num_query_groups",
                f"{groups} query groups must divide {self.num_attention_heads} heads and be divisible by "
                f"parallel.tp={tp}",
            )
        if self.ffn_hidden_size % tp:
            raise ConfigError("model.ffn_hidden_size", f"{self.ffn_hidden_size} is not divisible by parallel.tp={tp}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError("model.num_attention_heads", "the head dimension must be even for RoPE")

    def padded_vocab_size(self, tp: int = 1) -> int:
        """Vocabulary rounded up to a multiple of make_vocab_size_divisible_by x TP (Megatron's convention)."""
        return padded_vocab_size(self.vocab_size, tp, self.make_vocab_size_divisible_by)
