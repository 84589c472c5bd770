"""Distributed plumbing: process groups, megatron-core parallel state, seeding, and the CPU shims."""

from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import device, free_port, init_distributed, seed_all, setup_model_parallel

__all__ = ["ParallelConfig", "device", "free_port", "init_distributed", "seed_all", "setup_model_parallel"]
