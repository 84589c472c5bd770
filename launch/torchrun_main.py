"""torchrun, with a failed worker reported in one line instead of a traceback.

    python launch/torchrun_main.py TORCHRUN_ARG ...        (what `python -m torch.distributed.run` takes)

torchrun ends any run in which a worker exited non-zero by raising ChildFailedError, a traceback with a table of
the failures. launch/torchrun.sh reads each worker's own exit code (launch/record_exit.py) and says what it
means (3: a requeue, 2: a bad config), and each worker has already printed its own error, so this prints one
line naming the workers that failed and exits 1, as torchrun does. torchrun's own log line about a failed worker
("failed (exitcode: ...) local_rank: ...") says the same again, and is dropped.
"""

import logging
import sys

# The records of torch.distributed.elastic's process API that this launcher's one line replaces.
_SAID_BY_OUR_LINE = ("failed (exitcode: ",)


class _DropFailureRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_SAID_BY_OUR_LINE)


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DropFailureRecords())
    try:
        torchrun()
    except ChildFailedError as e:
        print(f"[torchrun] {_failures(e.failures)}", file=sys.stderr)
        sys.exit(1)


def _failures(failures: dict) -> str:
    """Every failed worker in one line, the first to fail first. torchrun's timestamps are whole seconds (the same
    for workers that fail together); within one, a worker killed by a signal (the OOM killer, kill -9) goes
    first: it takes the others down with it in their next collective."""
    order = sorted(failures, key=lambda r: (failures[r].timestamp, failures[r].exitcode >= 0, r))
    parts = []
    for i, rank in enumerate(order):
        f = failures[rank]
        code = f"{f.exitcode} ({f.signal_name()})" if f.exitcode < 0 else str(f.exitcode)
        head = "worker rank" if i == 0 else "then rank"
        parts.append(f"{head} {rank} (local rank {f.local_rank}, PID {f.pid}) {'exited with' if i == 0 else 'with'} "
                     f"{code}")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
