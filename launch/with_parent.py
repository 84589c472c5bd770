"""Run a command that gets SIGTERM when the process that started it dies (Linux; elsewhere it just runs it).

    python launch/with_parent.py PARENT_PID COMMAND [ARG ...]

launch/torchrun.sh starts torchrun through this file, so that killing the script outright (kill -9, the OOM
killer) still stops torchrun, which then stops its workers as on any SIGTERM (they save and exit): nothing is
left running. The command replaces this process (exec), keeping its PID, so signals sent to it reach the command.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: with_parent.py PARENT_PID COMMAND [ARG ...]")
    parent = int(sys.argv[1])
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # kept across exec
        if os.getppid() != parent:  # the parent died before the line above: nothing would ever send the signal
            sys.exit(f"with_parent.py: the launcher (PID {parent}) is already gone")
    os.execvp(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
