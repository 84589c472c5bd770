"""init_distributed on a GPU node, with CUDA and torch.distributed stood in: the rank's GPU is selected before
anything can touch CUDA, and the process group is bound to it. Setting up model parallelism again and again (the
test suite's rank pools, a tool loading several checkpoints) keeps a bounded number of groups and threads."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tests.parallel import layout_runs as cases
from vffn_pretrain.parallel import cpu_compat
from vffn_pretrain.parallel import init as pinit


def _stand_in_gpu_node(monkeypatch, visible_gpus: int, local_rank: int) -> list:
    """CUDA with `visible_gpus` devices and torch.distributed stood in; rank 3 of 4 with LOCAL_RANK `local_rank`.
    Returns the list of events (set_device, activate, init_process_group) in order."""
    events = []
    current = [0]

    def set_device(index):
        events.append(("set_device", int(index)))
        current[0] = int(index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible_gpus)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(cpu_compat, "activate", lambda: events.append(("activate", current[0])))
    monkeypatch.setattr(dist, "is_initialized", lambda: any(e[0] == "init_process_group" for e in events))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: events.append(("init_process_group", kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    for key, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK=str(local_rank), MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    return events


def test_one_gpu_bound_per_srun_task_is_device_0_whatever_the_local_rank(monkeypatch):
    # srun --gpus-per-task=1: each task sees its own GPU only, as device 0, while SLURM_LOCALID (LOCAL_RANK) is 3
    events = _stand_in_gpu_node(monkeypatch, visible_gpus=1, local_rank=3)
    assert pinit.init_distributed(timeout_s=7) == (3, 4)
    assert events[0] == ("set_device", 0)
    assert events[2][1]["device_id"] == torch.device("cuda", 0)


def test_gpu_is_selected_first_and_bound_to_the_group(monkeypatch):
    events = _stand_in_gpu_node(monkeypatch, visible_gpus=4, local_rank=3)  # torchrun: every rank sees all 4

    assert pinit.init_distributed(timeout_s=7) == (3, 4)
    assert events[0] == ("set_device", 3)
    assert events[1] == ("activate", 3)  # megatron's imports run with GPU 3 already current
    name, kwargs = events[2]
    assert name == "init_process_group"
    assert kwargs["backend"] == "nccl" and kwargs["device_id"] == torch.device("cuda", 3)
    assert kwargs["timeout"].total_seconds() == 7
    assert pinit.device() == torch.device("cuda", 3)


def test_setting_up_model_parallelism_again_does_not_pile_up_process_groups(single_rank):
    """Each gloo group owns threads until destroyed; megatron only forgets its groups, so without
    release_process_groups a test session (or a tool loading several checkpoints) grew to thousands of threads."""
    from torch.distributed import distributed_c10d as c10d

    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import setup_model_parallel

    setup_model_parallel(ParallelConfig())
    once = len(c10d._world.pg_map)
    for _ in range(5):
        setup_model_parallel(ParallelConfig())
    assert len(c10d._world.pg_map) == once


def test_models_built_again_and_again_leave_no_gloo_threads_behind():
    """Each gloo group has a thread that wakes many times a second, and a group lives on, destroyed or not, while
    anything refers to it: the previous model, its DDP wrapper and optimizer (in reference cycles), and megatron's
    memoised RotaryEmbedding.forward (the last 32 rotary modules, each with its context-parallel group). A test
    session's idle pool ranks had piled up hundreds of such threads and took most of a 2-core machine. Rebuilding
    frees the previous build's groups, and a pool rank between jobs keeps none of a torn-down job's groups."""
    from vffn_pretrain.testing.rank_pool import RankPool

    pool = RankPool(2)  # its own: a shared pool may be replaced between jobs (MAX_RANK_THREADS)
    try:
        idle = pool.run(cases.gloo_threads)[0]  # the world's group
        counts = [pool.run(cases.gloo_threads_after_training, {"pp": 2}, False)[0] for _ in range(3)]
        assert counts[0] >= idle + 10  # one set-up's groups: what each rebuild would add without the release
        assert counts[2] == counts[1] == counts[0], counts
        pool.run(cases.gloo_threads_after_training, {"pp": 2}, True)
        assert pool.run(cases.gloo_threads) == [idle, idle], counts  # the torn-down job's groups are gone
    finally:
        pool.close()
