"""The trainer's side concerns, each a small callback: console lines, metrics.jsonl, wandb, TensorBoard.

A callback sees plain dict records (the same ones written to metrics.jsonl) and runs on rank 0 only.
"""

from vffn_pretrain.training.callbacks.base import Callback, Callbacks
from vffn_pretrain.training.callbacks.build import build_callbacks
from vffn_pretrain.training.callbacks.console import ConsoleLogger
from vffn_pretrain.training.callbacks.metrics_file import MetricsFile
from vffn_pretrain.training.callbacks.tensorboard import TensorBoardLogger
from vffn_pretrain.training.callbacks.wandb_logger import WandbLogger

__all__ = ["Callback", "Callbacks", "build_callbacks", "ConsoleLogger", "MetricsFile", "TensorBoardLogger", "WandbLogger"]
