"""The trainer's side concerns, each a small callback: console lines, metrics.jsonl, wandb, TensorBoard.

A callback sees plain dict records (the same ones written to metrics.jsonl) and runs on rank 0 only."""
