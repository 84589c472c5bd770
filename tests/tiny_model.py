"""The tiny GPTs the tests build, defined once.

One shape serves the real trainer's tiny run (`tests/training/trainer_runs.py`, as Hydra overrides) and the
parallel-equivalence and resume runs (`tests/parallel/layout_runs.py`, as `ModelConfig` keywords); the two differ
only in the vocabulary. The FFN tests' whole-model cases (`tests/model/ffn/parity_cases.py`) build a smaller GPT.
"""

from __future__ import annotations

SHAPE = dict(num_layers=4, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4)
SEQ, GLOBAL_BATCH, MICRO_BATCH = 32, 8, 2

TRAINER_VOCAB = 512  # the trainer runs: a synthetic dataset read through a null tokenizer of this size
PARALLEL_VOCAB = 256  # the layout runs: a multiple of 128 x TP, so the padding does not depend on the layout

# The trainer's tiny run, model and batch, as Hydra overrides.
TRAINER_OVERRIDES = [
    *(f"model.{key}={value}" for key, value in SHAPE.items()), f"model.vocab_size={TRAINER_VOCAB}",
    f"train.seq_length={SEQ}", f"train.global_batch_size={GLOBAL_BATCH}", f"train.micro_batch_size={MICRO_BATCH}",
]

# The layout runs' model as ModelConfig keywords (ffn_hidden_size 256 is also ModelConfig's 4 x hidden_size).
PARALLEL_MODEL = dict(**SHAPE, vocab_size=PARALLEL_VOCAB, max_position_embeddings=SEQ)

# The FFN tests' whole-model GPT as ModelConfig keywords: the vocabulary is padded alike at TP 1 and 2.
FFN_GPT = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=256)
