"""torchrun, with a failed worker reported in one line instead of a traceback.

    python launch/torchrun_main.py TORCHRUN_ARG ...        (what `python -m torch.distributed.run` takes)

torchrun ends any run in which a worker exited non-zero by raising ChildFailedError, a traceback with a table of
the failures. launch/torchrun.sh reads each worker's own exit code (launch/record_exit.py) and says what it
means (3: a requeue, 2: a bad config), and each worker has already printed its own error, so this prints one
line naming the first worker that failed and exits 1, as torchrun does.
"""

import sys


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        more = f" ({len(e.failures) - 1} more after it)" if len(e.failures) > 1 else ""
        print(f"[torchrun] worker rank {rank} (local rank {failure.local_rank}, PID {failure.pid}) exited with "
              f"{failure.exitcode}{more}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
