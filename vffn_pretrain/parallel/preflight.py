"""Start-up check under any launcher: every rank reports its host and device, and one all-reduce completes
within a timeout; otherwise the run refuses to start with a message that says which ranks answered."""

from __future__ import annotations

import socket
import threading

import torch
import torch.distributed as dist


class PreflightError(RuntimeError):
    pass


def preflight(timeout_s: float = 60.0) -> list[dict]:
    """Collective. Returns [{rank, host, device}] for every rank (on every rank)."""
    dev = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})" if torch.cuda.is_available() \
        else "cpu"
    me = {"rank": dist.get_rank(), "host": socket.gethostname(), "device": dev}
    result: dict = {}

    def exchange():
        try:
            ones = torch.ones(1, device="cuda" if torch.cuda.is_available() else "cpu")
            dist.all_reduce(ones)
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, me)
            result["ranks"] = gathered
            result["sum"] = int(ones.item())
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    worker = threading.Thread(target=exchange, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise PreflightError(
            f"pre-flight: rank {me['rank']} on {me['host']} waited {timeout_s:.0f} s for an all-reduce over "
            f"{dist.get_world_size()} ranks; some rank is unreachable (check MASTER_ADDR/MASTER_PORT, the "
            "network between nodes, and that every node started). Raise parallel.init_timeout_s if start-up "
            "is just slow."
        )
    if "error" in result:
        raise PreflightError(f"pre-flight all-reduce failed on rank {me['rank']}: {result['error']}")
    if result["sum"] != dist.get_world_size():
        raise PreflightError(f"pre-flight all-reduce returned {result['sum']}, expected {dist.get_world_size()}")
    return result["ranks"]
