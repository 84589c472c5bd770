"""What to tell the user when a collective fails because another rank is gone.

A rank that dies (the OOM killer, a failed node, its own error) leaves the others inside a collective: gloo
raises a RuntimeError ("Connection reset by peer", "Connection closed by peer", or "Timed out waiting" once
`parallel.collective_timeout_min` has passed), torch's store and NCCL raise its `DistError` kinds. None of that
is this rank's fault, and its traceback hides the message that matters: the one the lost rank (or the launcher,
for a rank killed outright) printed. `describe` turns such an error into one line; anything else is not ours to
explain and stays an error of its own.
"""

from __future__ import annotations

import re

# gloo's messages start with the source location of the failure: "[.../gloo/transport/tcp/pair.cc:537] ".
_GLOO_LOCATION = re.compile(r"^\[[^\]]*gloo[^\]]*\]\s*")


def _is_lost_peer(e: BaseException) -> bool:
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None),
                              getattr(dist, "DistBackendError", None)) if k is not None)
    if isinstance(e, kinds):
        return True
    return isinstance(e, RuntimeError) and "gloo/transport" in str(e)


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = _GLOO_LOCATION.sub("", text)
    head, dot, _ = text.partition(". ")
    return head if dot else text


def describe(e: BaseException, collective_timeout_min: float | None = None) -> str | None:
    """One line for a collective that failed because another rank stopped or stopped answering, or None when
    `e` is not that."""
    if not _is_lost_peer(e):
        return None
    why = _first_sentence(e)
    if "timed out" in why.lower() or "timeout" in why.lower():
        limit = f" ({collective_timeout_min:g} min)" if collective_timeout_min is not None else ""
        return (f"another rank did not answer within parallel.collective_timeout_min{limit} ({why}): it hangs or "
                f"has stopped; its own output says why; the checkpoints already saved are intact")
    return (f"lost contact with another rank in a collective ({why}): it stopped first, and its own message (or "
            f"the launcher's line about it) says why; the checkpoints already saved are intact")
