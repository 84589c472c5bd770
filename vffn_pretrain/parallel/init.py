"""Process-group set-up: one entry point for torchrun (any world size) and a plain single process.

Model code never touches process groups: it asks megatron-core's `parallel_state`, which `setup_model_parallel`
initialises here.
"""

from __future__ import annotations

import datetime
import gc
import os
import random
import socket

import numpy as np
import torch
import torch.distributed as dist

from vffn_pretrain.parallel import cpu_compat
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.launcher_env import slurm_step_world_size


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this rank computes on: its local GPU, else the CPU. The one source of that fact: every tensor
    handed to a collective is made on it.

    It reads the CUDA *current* device, which is per thread: `init_distributed` selects the rank's GPU in the main
    thread, so call this (and run collectives) from the main thread only."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(timeout_s: float = 300.0) -> tuple[int, int]:
    """Initialise torch.distributed (nccl on GPU, gloo on CPU) and the CPU shims; returns (rank, world_size).

    Under torchrun (RANK/WORLD_SIZE/MASTER_ADDR set) it joins that world; otherwise it makes a world of one on a
    free loopback port. Idempotent. Selects the rank's GPU (LOCAL_RANK) before anything else can touch CUDA.
    `timeout_s` (parallel.init_timeout_s) bounds joining the world; it stays the default group's timeout until
    `set_collective_timeout` gives the run's collectives theirs (after the pre-flight check).
    """
    join = {}  # torchrun / srun: the environment says where; a plain process: a world of one, said here
    if not dist.is_initialized():
        if "RANK" not in os.environ and slurm_step_world_size() > 1:
            _env_from_slurm_tasks()
        if "RANK" not in os.environ:
            # Not exported: a subprocess (a launcher, a test) must not inherit this store's address as its own.
            join = {"init_method": f"tcp://127.0.0.1:{os.environ.get('MASTER_PORT') or free_port()}", "rank": 0,
                    "world_size": 1}
    if torch.cuda.is_available():
        # First: megatron's imports in cpu_compat.activate (TE, apex) may query the device, which would open a
        # context on GPU 0 for every rank of the node.
        torch.cuda.set_device(local_gpu_index())
    cpu_compat.activate()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # device_id binds the group to the rank's GPU (no guessing for barriers; communicators made up front).
    bind = {"device_id": device()} if backend == "nccl" else {}
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **bind, **join)
    except Exception as e:  # a store that never answers, a port in use, ...: say where we tried to go
        where = join.get("init_method", "tcp://").removeprefix("tcp://") if join else \
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise RuntimeError(
            f"rank {os.environ.get('RANK', 0)} of {os.environ.get('WORLD_SIZE', 1)} could not join the process "
            f"group at {where} within {timeout_s:.0f} s "
            f"(parallel.init_timeout_s): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Check MASTER_ADDR/MASTER_PORT and that every node was started."
        ) from e
    return dist.get_rank(), dist.get_world_size()


def local_gpu_index() -> int:
    """This rank's GPU among those it sees: LOCAL_RANK modulo their number. Under torchrun every rank of a node
    sees all of the node's GPUs and LOCAL_RANK picks one; under srun with one GPU bound to each task
    (--gpus-per-task=1, --gpu-bind) a task sees only its own, as device 0, whatever its LOCAL_RANK."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)


def set_collective_timeout(minutes: float) -> None:
    """From now on a collective of the default group may wait `minutes` (parallel.collective_timeout_min) for the
    other ranks before the run is aborted: rank 0 may build dataset indices or prune checkpoints while the others
    wait at a barrier. megatron's own groups get the same timeout in `setup_model_parallel`."""
    # torch has no public setter; this one (torch >= 2.4) changes the timeout of the group's gloo/NCCL backends
    # for every collective issued afterwards.
    dist.distributed_c10d._set_pg_timeout(datetime.timedelta(minutes=minutes))
    _COLLECTIVES["started"] = True


# Whether the run's collectives have begun (set_collective_timeout was called): from then on a failed collective
# is most likely another rank's end (parallel.collective_failure), before it an error of joining the world.
_COLLECTIVES = {"started": False}


def collectives_started() -> bool:
    return _COLLECTIVES["started"]


def _env_from_slurm_tasks() -> None:
    """One srun task per rank without torchrun (e.g. submitit): derive torch.distributed's variables."""
    import subprocess

    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=str(slurm_step_world_size()),
        LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"), MASTER_ADDR=os.environ.get("MASTER_ADDR", nodes[0]),
    )
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def setup_model_parallel(cfg: ParallelConfig) -> None:
    """(Re-)initialise megatron-core's parallel_state for `cfg` over the current world."""
    from megatron.core import parallel_state as ps

    cfg.validate_static()
    cfg.data_parallel_size(dist.get_world_size())  # raises a ConfigError naming the key if impossible
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    release_process_groups()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        virtual_pipeline_model_parallel_size=cfg.effective_vpp,
        context_parallel_size=cfg.cp,
        expert_model_parallel_size=cfg.ep,
        distributed_timeout_minutes=cfg.collective_timeout_min,
    )


def release_process_groups() -> None:
    """Destroy every process group but the default one.

    torch keeps each group (under gloo with three threads of its own) until it is destroyed, and megatron's
    destroy_model_parallel only forgets most of them; a process that sets up model parallelism again and again
    (the test suite, a tool loading several checkpoints) would pile up thousands of idle threads. Those threads
    are not only memory: gloo's event loop wakes many times a second, so a few hundred of them keep a core
    measurably busy while the process does nothing. A destroyed group lives on as long as anything refers to it,
    and the previous model, its DDP wrapper and optimizer do, in reference cycles that Python's collector may not
    visit for a long time; collecting them now stops the threads now. Local to this rank: no collective."""
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return
    default = c10d._get_default_group()
    for group in list(c10d._world.pg_map):
        if group is not default:
            dist.destroy_process_group(group)
    _forget_destroyed_groups()
    gc.collect()


def _forget_destroyed_groups() -> None:
    """Drop what still refers to the destroyed groups inside megatron-core: destroy_model_parallel leaves a few of
    parallel_state's globals set (the intra-partial data-parallel groups), and RotaryEmbedding.forward is memoised
    with functools.lru_cache on the method, which keeps the last 32 rotary modules alive, each with its
    context-parallel group."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    for name, value in list(vars(ps).items()):
        if isinstance(value, dist.ProcessGroup) and value is not dist.GroupMember.WORLD:
            setattr(ps, name, None)
    cache_clear = getattr(RotaryEmbedding.forward, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


def seed_all(seed: int) -> None:
    """Seed every generator reproducibly. Call after `setup_model_parallel`.

    Python, numpy and torch's default generators get `seed` on every rank (the same in a TP group, which the
    Gumbel noise and the replicated router rely on); megatron's tracker gets its per-TP-rank streams for
    model-parallel dropout and initialisation.
    """
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
