"""What to tell the user when a collective fails because another rank is gone.

A rank that dies (the OOM killer, a failed node, its own error) leaves the others inside a collective, and
each raises an error whose message says so: gloo's "Connection reset by peer" / "Connection closed by peer", or
"Timed out waiting ..." once `parallel.collective_timeout_min` has passed; NCCL's "ncclRemoteError". None of
that is this rank's fault, and its traceback hides the message that matters: the one the lost rank (or the
launcher, for a rank killed outright) printed. `describe` turns such an error into one line.

It goes by the message, never by the exception's type alone: torch raises the same DistBackendError for a
local CUDA or NCCL usage error, which is this rank's own problem and keeps its traceback. Before the run's
collectives begin (`parallel.init.set_collective_timeout`), errors joining the world say what they are
themselves (parallel.init_timeout_s, MASTER_ADDR) and are not explained here either.
"""

from __future__ import annotations

import re

# gloo's messages start with the source location of the failure: "[.../gloo/transport/tcp/pair.cc:537] ".
_GLOO_LOCATION = re.compile(r"^\[[^\]]*gloo[^\]]*\]\s*")
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "ncclRemoteError",
             "remote process exiting prematurely")
TIMED_OUT = ("Timed out waiting",)


def _first_sentence(text: str) -> str:
    text = _GLOO_LOCATION.sub("", text.strip().splitlines()[0] if text.strip() else "")
    head, dot, _ = text.partition(". ")
    return (head if dot else text).rstrip(".")


def describe(e: BaseException, collective_timeout_min: float | None = None, *,
             collectives_started: bool | None = None) -> str | None:
    """One line for a collective that failed because another rank stopped or stopped answering, or None when
    `e` is not that (or the run's collectives had not begun: `collectives_started`, by default asked of
    parallel.init)."""
    if collectives_started is None:
        from vffn_pretrain.parallel.init import collectives_started as started

        collectives_started = started()
    if not collectives_started or not isinstance(e, RuntimeError):  # torch's DistError kinds are RuntimeErrors
        return None
    text = str(e)
    line = next((ln for ln in text.splitlines() if any(p in ln for p in PEER_GONE + TIMED_OUT)), None)
    if line is None:
        return None
    why = _first_sentence(line)
    if any(p in line for p in TIMED_OUT):
        limit = f" ({collective_timeout_min:g} min)" if collective_timeout_min is not None else ""
        return (f"another rank did not answer within parallel.collective_timeout_min{limit} ({why}): it hangs or "
                f"has stopped; its own output says why; the checkpoints already saved are intact")
    return (f"lost contact with another rank in a collective ({why}): it stopped first, and its own message (or "
            f"the launcher's line about it) says why; the checkpoints already saved are intact")
