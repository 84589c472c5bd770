"""TensorBoard scalars in run_dir/tensorboard (needs the `tensorboard` extra)."""

from __future__ import annotations

from vffn_pretrain.training.callbacks.base import Callback


class TensorBoardLogger(Callback):
    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = str(log_dir)
        self.writer = SummaryWriter(log_dir=self.log_dir)

    def target(self) -> str:
        return self.log_dir

    def _scalars(self, record, prefix):
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.writer.flush()

    def on_log(self, record):
        self._scalars(record, "train")

    def on_eval(self, record):
        self._scalars(record, "eval")

    def on_checkpoint(self, record):
        self._scalars(record, "checkpoint")

    def on_train_end(self, summary):
        self.writer.close()
