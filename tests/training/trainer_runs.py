"""Run the real trainer from tests: in this process, on every rank of a RankPool, or as a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests import tiny_model
from vffn_pretrain.config.paths import CONF_DIR

VOCAB = tiny_model.TRAINER_VOCAB
# The tiny model and batch (tests/tiny_model.py); the data is a synthetic indexed dataset (see make_dataset).
BASE = [
    *tiny_model.TRAINER_OVERRIDES, "train.lr=3e-3", "train.eval_interval=1000", "train.eval_iters=1",
    "logging.interval=1", "logging.wandb.enabled=false", "logging.progress_bar=false",
    f"data.tokenizer=null:{VOCAB}",
]


def make_dataset(directory: Path, num_docs: int = 400, seed: int = 0) -> str:
    """A synthetic corpus as a Megatron indexed dataset: documents of a repeating pattern with noise, so a
    model can learn it. Returns the prefix."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    prefix = str(directory / "synthetic")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(num_docs):
        period = int(rng.integers(2, 8))
        motif = rng.integers(1, VOCAB - 1, size=period)
        doc = np.tile(motif, 200 // period + 1)[: int(rng.integers(60, 200))]
        noise = rng.random(doc.size) < 0.1
        doc[noise] = rng.integers(1, VOCAB - 1, size=int(noise.sum()))
        builder.add_document(torch.from_numpy(np.append(doc, VOCAB - 1).astype(np.int64)), [doc.size + 1])
    builder.finalize(prefix + ".idx")
    return prefix


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose("config", overrides=overrides)


def run_config(overrides: list[str], world_size: int = 1):
    from vffn_pretrain.config.run import load_run_config

    return load_run_config(compose(overrides), world_size=world_size)


def train(overrides: list[str]) -> dict:
    """Run the trainer in this process (every rank of a pool calls it); returns the summary and the losses."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from vffn_pretrain.training.trainer import Trainer

    world = dist.get_world_size() if dist.is_initialized() else 1
    trainer = Trainer(run_config(overrides, world_size=world))
    trainer.setup()
    code = trainer.fit()
    ps.destroy_model_parallel()
    return {"exit_code": code, "summary": trainer.summary, "losses": read_losses(trainer.cfg.run_dir)}


def read_losses(run_dir) -> dict[int, float]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def checkpoint_tensors(path) -> dict:
    """Every tensor of a distributed checkpoint (weights and optimizer state) by global key, read without a
    process group by torch's own reader: an independent view of what was written."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(path), f"{tmp}/all.pt")
        state = torch.load(f"{tmp}/all.pt", weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def assert_same_tensors(a: dict, b: dict) -> None:
    """`a` and `b` hold the same keys and bitwise equal tensors."""
    import torch

    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ: {different[:5]}"


class Finished:
    def __init__(self, returncode: int, stdout: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, ""


class Running:
    """A trainer process whose output goes to a file (a pipe would be held open by the checkpoint writer's
    helper processes after a kill -9, and reading it would hang)."""

    def __init__(self, cmd, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)

    def poll(self):
        return self.proc.poll()

    def send_signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> Finished:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
            _kill_group(self.proc.pid)
        return Finished(code, self.log_path.read_text())

    @property
    def output(self) -> str:
        return self.log_path.read_text()


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)  # leftover helper processes of a killed trainer
    except (ProcessLookupError, PermissionError):
        pass


_counter = [0]


def train_subprocess(overrides: list[str], *, env: dict | None = None, timeout: float = 300,
                     wait: bool = True):
    """`python -m vffn_pretrain.train OVERRIDES` as a fresh process; returns Finished (wait) or Running."""
    import tempfile

    cmd = [sys.executable, "-m", "vffn_pretrain.train", *overrides]
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    _counter[0] += 1
    log_path = Path(tempfile.mkdtemp(prefix="vffn-train-log-")) / f"run{_counter[0]}.log"
    running = Running(cmd, full_env, log_path)
    return running.wait(timeout=timeout) if wait else running


def converted_logits(overrides: list[str], dense_ckpt: str, kind: str, variant_overrides: tuple = ()) -> dict:
    """Logits of the dense model in `dense_ckpt`, and of a `kind` model initialised from it (init_from) with one
    loop forced and the width path off, on one batch. Runs on every rank of a pool (TP/PP as configured).
    `variant_overrides` apply to the `kind` model only (e.g. an ffn.layers pattern)."""
    import torch
    from megatron.core import parallel_state as ps

    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.testing.batches import synthetic_global_batch
    from vffn_pretrain.training.trainer import Trainer

    out = {}
    for name, extra in (("dense", ["ffn=dense", "checkpoint.resume=false", f"train.init_from={dense_ckpt}"]),
                        (kind, [f"ffn={kind}", "checkpoint.resume=false", f"train.init_from={dense_ckpt}",
                                *variant_overrides])):
        trainer = Trainer(run_config([*overrides, *extra]))
        trainer.setup()
        model = trainer.ddp[0].module
        model.eval()
        ffn_state.set_inference_overrides(trainer.ddp, force_loops=1, disable_width=True)
        batch = synthetic_global_batch(7, 0, 2, 32, VOCAB)
        with torch.no_grad():
            logits = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)
        out[name] = logits.float().numpy()
        ps.destroy_model_parallel()
    return out


def generate(argv: list[str]) -> str:
    from megatron.core import parallel_state as ps

    from vffn_pretrain.generate import generate as run

    text = run(argv)
    ps.destroy_model_parallel()
    return text
