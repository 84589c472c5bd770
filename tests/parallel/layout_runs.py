"""Functions run on every rank of a RankPool by the distributed tests (module level, so they can be pickled).

The model is the tiny dense GPT in fp32. A "reference" run uses TP=PP=1 with every DP rank fed the whole global
batch, which is numerically a single-rank run (megatron sums the identical per-token gradients over DP and
divides by DP x tokens). Layouts under test load the reference's initial weights through a distributed
checkpoint (which reshards them) and are compared with its losses and gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps

from tests import tiny_model
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all, setup_model_parallel
from vffn_pretrain.testing.batches import split_global_batch, synthetic_global_batch
from vffn_pretrain.testing.params import swap_params_with
from vffn_pretrain.training import dist_ckpt
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp
from vffn_pretrain.training.step import train_step

SEED = 1234
GBS, MBS, SEQ = tiny_model.GLOBAL_BATCH, tiny_model.MICRO_BATCH, tiny_model.SEQ
VOCAB = tiny_model.PARALLEL_VOCAB  # a multiple of 128 x TP, so padding is layout-independent
TINY = tiny_model.PARALLEL_MODEL


def build(layout: dict, *, distributed_optimizer: bool = False, ffn: str = "dense"):
    parallel = ParallelConfig(**layout, distributed_optimizer=distributed_optimizer)
    setup_model_parallel(parallel)
    seed_all(SEED)
    chunks = build_model(ModelConfig(**TINY), FFNConfig(kind=ffn), parallel)
    ddp = wrap_ddp(chunks, parallel)
    optimizer = build_optimizer(ddp, OptimConfig(lr=3e-3, min_lr=3e-3), parallel)
    return ddp, optimizer


def run_steps(ddp, optimizer, steps, *, full_batch=False, on_first_grads=None):
    """Train `steps` (global step numbers); returns the losses. `full_batch`: every DP rank takes the whole
    global batch (the reference)."""
    dp_rank, dp_size = (0, 1) if full_batch else (ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    losses = []
    for i, step in enumerate(steps):
        batch = synthetic_global_batch(SEED, step, GBS, SEQ, VOCAB)
        micro = split_global_batch(batch, step=step, dp_rank=dp_rank, dp_size=dp_size, micro_batch_size=MBS)
        hook = on_first_grads if i == 0 else None
        result = train_step(ddp, optimizer, micro, seq_length=SEQ, micro_batch_size=MBS, noise_seed=SEED,
                            before_optimizer=hook)
        losses.append(result.loss)
    return losses


def _params(ddp):
    return [p for chunk in ddp for p in chunk.module.parameters()]


def save_grads(ddp, directory):
    """Save every parameter's reduced gradient as a checkpoint laid out like the weights."""
    previous = swap_params_with(ddp, {p: p.main_grad.detach().clone() for p in _params(ddp)})
    try:
        dist_ckpt.save(directory, ddp)
    finally:
        swap_params_with(ddp, previous)


def max_grad_diff(ddp, reference_dir) -> tuple[float, float]:
    """(max |grad - reference grad|, max |reference grad|) over this rank's shards, reduced over the world."""
    params = _params(ddp)
    holders = {p: torch.zeros_like(p.data) for p in params}
    previous = swap_params_with(ddp, holders)
    try:
        dist_ckpt.load(reference_dir, ddp)
    finally:
        swap_params_with(ddp, previous)
    diff = max(float((p.main_grad - holders[p]).abs().max()) for p in params)
    scale = max(float(holders[p].abs().max()) for p in params)
    out = torch.tensor([diff, scale], dtype=torch.float64)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return float(out[0]), float(out[1])


def reference(workdir: str, steps: int = 3) -> dict:
    """TP=PP=1, full batch on every rank: writes initial weights and first-step grads, returns the losses."""
    ddp, optimizer = build({})
    dist_ckpt.save(Path(workdir) / "init", ddp)
    losses = run_steps(ddp, optimizer, range(steps), full_batch=True,
                       on_first_grads=lambda: save_grads(ddp, Path(workdir) / "grads"))
    ps.destroy_model_parallel()
    return {"losses": losses}


def layout_run(workdir: str, layout: dict, steps: int = 3, distributed_optimizer: bool = False) -> dict:
    """The layout under test from the reference's initial weights: losses and first-step gradient error."""
    ddp, optimizer = build(layout, distributed_optimizer=distributed_optimizer)
    dist_ckpt.load(Path(workdir) / "init", ddp)
    grad_err = {}

    def check_grads():
        grad_err["diff"], grad_err["scale"] = max_grad_diff(ddp, Path(workdir) / "grads")

    # With the distributed optimizer each DP rank's grad buffer is only reduced on the shard it owns.
    losses = run_steps(ddp, optimizer, range(steps), on_first_grads=None if distributed_optimizer else check_grads)
    overlap = ddp[0].module.config.overlap_p2p_comm  # the schedule's code path this run took
    ps.destroy_model_parallel()
    return {"losses": losses, "overlap_p2p_comm": overlap, **grad_err}


def resume_run(workdir: str, layout: dict, distributed_optimizer: bool, load_layouts: tuple = (None,)) -> dict:
    """2 steps, save, 2 more steps; then, for each of `load_layouts` (None: `layout` itself), a fresh model at
    that layout loads the checkpoint and repeats the last 2 steps. Returns the uninterrupted losses and, per
    load layout in order, the resumed ones."""
    ckpt = Path(workdir) / "ckpt"
    ddp, optimizer = build(layout, distributed_optimizer=distributed_optimizer)
    run_steps(ddp, optimizer, range(2))
    dist_ckpt.save(ckpt, ddp, optimizer, common={"step": 2})
    uninterrupted = run_steps(ddp, optimizer, range(2, 4))
    ps.destroy_model_parallel()
    del ddp, optimizer

    resumed, steps = [], []
    for load_layout in load_layouts:
        ddp, optimizer = build(load_layout or layout, distributed_optimizer=distributed_optimizer)
        common = dist_ckpt.load(ckpt, ddp, optimizer)
        resumed.append(run_steps(ddp, optimizer, range(common["step"], common["step"] + 2)))
        steps.append(common["step"])
        ps.destroy_model_parallel()
        del ddp, optimizer
    return {"uninterrupted": uninterrupted, "resumed": resumed, "steps": steps}


def shim_usage(workdir: str) -> dict:
    """Exercise PP + TP + the distributed optimizer's checkpoint path; report which shims were hit, and which
    CUDA literals were rewritten by the targeted variant or caught only by the tracing mode."""
    from vffn_pretrain.parallel import cpu_compat

    with cpu_compat.trace_cuda_literals() as trace:
        ddp, optimizer = build({"tp": 2, "pp": 2}, distributed_optimizer=True)
        run_steps(ddp, optimizer, range(1))
        dist_ckpt.save(Path(workdir) / "shim_ckpt", ddp, optimizer, common={"step": 1})
        dist_ckpt.load(Path(workdir) / "shim_ckpt", ddp, optimizer)
        run_steps(ddp, optimizer, range(1, 2))
        ps.destroy_model_parallel()
    return {
        "active": sorted(cpu_compat.active()),
        "hits": dict(cpu_compat.HITS),
        "targeted": sorted(trace.targeted),
        "uncovered": sorted(trace.uncovered),
    }


def as_array(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def gloo_threads() -> int:
    """This process's gloo event-loop threads (one per live gloo process group)."""
    tasks = Path("/proc/self/task")
    return sum((task / "comm").read_text().strip() == "gloo_tcp_loop" for task in tasks.iterdir())


def gloo_threads_after_training(layout: dict, tear_down: bool) -> int:
    """Build the model at `layout`, train one step and drop it (and, if `tear_down`, megatron's parallel state
    too, as most jobs do); the gloo threads counted at the end."""
    ddp, optimizer = build(layout)
    run_steps(ddp, optimizer, range(1))
    del ddp, optimizer
    if tear_down:
        ps.destroy_model_parallel()
    return gloo_threads()


__all__ = ["dist_checkpointing"]
