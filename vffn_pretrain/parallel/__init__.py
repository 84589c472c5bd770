"""Distributed plumbing: process groups, megatron-core parallel state, seeding, and the CPU shims.

`ParallelConfig` is plain data; the rest imports torch and megatron-core, so it loads on first use (a config or
a plan can be read without them)."""

from vffn_pretrain.parallel.config import ParallelConfig

_FROM_INIT = ("device", "free_port", "init_distributed", "seed_all", "setup_model_parallel")
__all__ = ["ParallelConfig", *_FROM_INIT]


def __getattr__(name: str):
    if name in _FROM_INIT:
        from vffn_pretrain.parallel import init

        return getattr(init, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
