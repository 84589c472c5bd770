"""Run a module as ``__main__`` (like ``python -m MODULE ARGS``) and record its exit code.

    python launch/record_exit.py MODULE [ARG ...]

torchrun reports any failed worker as exit code 1, which hides the trainer's "exit 3 = requeue me"
contract. launch/torchrun.sh therefore starts each worker through this file: the module runs in
this same process (so signals reach the trainer directly, and torchrun can still kill it), and the
exit code is written to ``$VFFN_EXIT_DIR/rank-$RANK`` before the process exits with that code.
``$VFFN_EXIT_DIR/started-$RANK`` is written first, so the launcher can tell "torchrun never started a
worker" (a rendezvous failure) from a worker that died. Without VFFN_EXIT_DIR it only runs the module.
The worker watches torchrun: if torchrun is killed outright (kill -9), the worker gets SIGTERM (it saves and
exits 3), so no worker is left behind (vffn_pretrain.process.lifetime).
"""

import os
import runpy
import signal
import sys


def _write(name: str, text: str) -> None:
    exit_dir = os.environ.get("VFFN_EXIT_DIR")
    if not exit_dir:
        return
    try:
        with open(os.path.join(exit_dir, f"{name}-{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(text)
    except FileNotFoundError:  # the launcher is gone and took its directory along: nobody is left to read it
        pass


def _record(code: int) -> None:
    _write("rank", f"{code}\n")


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1  # sys.exit("message") exits 1


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: record_exit.py MODULE [ARG ...]")
    module = sys.argv[1]
    _write("started", f"{os.getpid()}\n")
    # torchrun.sh starts torchrun with SIGUSR1 ignored and children inherit that; give the trainer
    # the default disposition back so this launcher trick is invisible to it.
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    from vffn_pretrain.process.lifetime import exit_with_parent

    exit_with_parent(parent=os.getppid(), first_signal=signal.SIGTERM)
    sys.argv = [module, *sys.argv[2:]]  # run_module sets argv[0] to the module's file

    def run_and_record() -> None:
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            _record(_exit_code(e))
            raise
        except BaseException:
            _record(1)
            raise
        _record(0)

    # The trainer's own quick exit (vffn_pretrain.process.exits) becomes this one, after the code is recorded.
    from vffn_pretrain.process.exits import run_and_exit_quickly
    run_and_exit_quickly(run_and_record)


if __name__ == "__main__":
    main()
