"""Start-up check under any launcher: every rank reports its host and device, and one all-reduce completes
within a timeout; otherwise the run refuses to start with a message that says which ranks answered.

Everything runs in the main thread, the only one where the CUDA current device is the rank's GPU (it is per
thread: a helper thread would put every rank's tensor, and NCCL communicator, on GPU 0). The all-reduce is issued
asynchronously and waited for with the timeout, so a rank that never answers cannot hang the check.
"""

from __future__ import annotations

import datetime
import socket

import torch
import torch.distributed as dist

from vffn_pretrain.parallel.init import device as rank_device


class PreflightError(RuntimeError):
    pass


def preflight(timeout_s: float = 60.0) -> list[dict]:
    """Collective, from the main thread. Returns [{rank, host, device}] for every rank (on every rank)."""
    dev = rank_device()
    described = f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
    me = {"rank": dist.get_rank(), "host": socket.gethostname(), "device": described}
    world = dist.get_world_size()
    ones = torch.ones(1, device=dev)
    try:
        dist.all_reduce(ones, async_op=True).wait(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - a timeout or a broken peer: reported with the rank and host
        if "timed out" in str(e).lower() or "timeout" in str(e).lower():
            raise PreflightError(
                f"pre-flight: rank {me['rank']} on {me['host']} waited {timeout_s:.0f} s for an all-reduce over "
                f"{world} ranks; some rank is unreachable (check MASTER_ADDR/MASTER_PORT, the network between "
                "nodes, and that every node started). Raise parallel.init_timeout_s if start-up is just slow."
            ) from None
        raise PreflightError(f"pre-flight all-reduce failed on rank {me['rank']}: {e}") from None
    if int(ones.item()) != world:
        raise PreflightError(f"pre-flight all-reduce returned {int(ones.item())}, expected {world}")
    gathered: list = [None] * world
    dist.all_gather_object(gathered, me)
    return gathered
