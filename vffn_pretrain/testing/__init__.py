"""Helpers for testing distributed code on CPU: a pool of gloo ranks that runs functions on every rank."""

from vffn_pretrain.testing.rank_pool import RankPool, RankPoolError

__all__ = ["RankPool", "RankPoolError"]
