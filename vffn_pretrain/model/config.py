"""`model.*` config group: the transformer's shape (the FFN's own choices live in `ffn.*`)."""

from __future__ import annotations

from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import MODEL, check_fields, setting
from vffn_pretrain.model.counting import padded_vocab_size


@dataclass
class ModelConfig:
    """Validated `model.*` keys. The block is OLMo-style: pre-norm RMSNorm, RoPE, SwiGLU, no biases, untied."""

    name: str = "tiny"
    num_layers: int = setting(4, ge=1, changes=MODEL)
    hidden_size: int = setting(128, ge=1, changes=MODEL)
    ffn_hidden_size: int | None = setting(None, ge=1, changes=MODEL)  # default 4 x hidden_size (method.md §12 #1)
    num_attention_heads: int = setting(4, ge=1, changes=MODEL)
    num_query_groups: int | None = setting(None, ge=1, changes=MODEL)  # GQA groups; None = multi-head attention
    # The tokenizer's vocabulary; the embedding is padded (see padded_vocab_size).
    vocab_size: int = setting(8192, ge=1, changes=MODEL)
    max_position_embeddings: int = setting(4096, ge=1)  # bounds train.seq_length (RoPE: no weights)
    rotary_base: int = setting(10000, gt=0, changes=MODEL)
    norm_epsilon: float = setting(1e-6, gt=0, lt=1, changes=MODEL)
    init_std: float = setting(0.02, gt=0)  # truncated normal at +-3 std for every linear (docs/method.md §8)
    tied_embeddings: bool = setting(False, changes=MODEL)
    make_vocab_size_divisible_by: int = setting(128, ge=1, changes=MODEL)

    def __post_init__(self):
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size

    def validate(self, tp: int = 1) -> None:
        check_fields(self, "model")
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
