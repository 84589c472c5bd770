"""Decisions rank 0 makes alone and every rank follows: which checkpoints exist, whether the run directories
could be taken. A directory listing on a shared filesystem can differ between nodes (NFS caches attributes), so
ranks that looked for themselves could resume different steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.training.errors import RunError

T = TypeVar("T")


def decided_by_rank0(decide: Callable[[], T]) -> T:
    """Collective. `decide()` runs on rank 0; its result (picklable) is returned on every rank. A ConfigError or
    RunError it raises is raised on every rank alike; any other error is raised on rank 0 as it is and as a
    RuntimeError with its message on the others (so none waits for a broadcast that never comes)."""
    payload: list[Any] = [None]
    error: Exception | None = None
    if dist.get_rank() == 0:
        try:
            payload[0] = ("ok", decide())
        except ConfigError as e:
            payload[0] = ("config", (e.key, e.reason))
        except RunError as e:
            payload[0] = ("run", (str(e), e.exit_code))
        except Exception as e:  # noqa: BLE001 - sent to the other ranks, re-raised here below
            error = e
            payload[0] = ("error", f"on rank 0: {type(e).__name__}: {e}")
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if error is not None:
        raise error
    if kind == "config":
        raise ConfigError(*value)
    if kind == "run":
        raise RunError(*value)
    if kind == "error":
        raise RuntimeError(value)
    return value
