"""process/exits.py: the quick exit of a command keeps what a normal exit does (the exit code, the exit handlers,
buffered output, waiting for another thread) and skips only the interpreter's tear-down."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import atexit, sys, threading, time
    from vffn_pretrain.process import exits
    from vffn_pretrain.process.exits import run_and_exit_quickly
    exits.HEAVY_MODULES = ("threading",)  # as if torch were loaded: the quick exit is taken

    def main():
        atexit.register(lambda: open(sys.argv[1], "w").write("handler ran"))
        sys.stdout.write("buffered, no newline")  # left in the buffer: the exit must flush it
        if sys.argv[3] == "thread":
            threading.Thread(target=lambda: (time.sleep(1), open(sys.argv[1] + ".thread", "w").write("done"))).start()
        ending = sys.argv[2]
        if ending == "return":
            return
        if ending == "raise":
            raise RuntimeError("a bug")
        sys.exit(None if ending == "None" else int(ending) if ending.lstrip("-").isdigit() else ending)

    run_and_exit_quickly(main)
""")


def _run(tmp_path, ending: str, thread: bool = False) -> subprocess.CompletedProcess:
    marker = tmp_path / "marker"
    return subprocess.run([sys.executable, "-c", PROGRAM, str(marker), ending, "thread" if thread else "-"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ending, code", [("return", 0), ("None", 0), ("0", 0), ("3", 3), ("130", 130),
                                          ("a message", 1)])
def test_the_exit_code_the_handlers_and_the_output_survive(tmp_path, ending, code):
    done = _run(tmp_path, ending)
    assert done.returncode == code, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "marker").read_text() == "handler ran"
    if ending == "a message":
        assert done.stderr.strip() == "a message"  # what sys.exit("a message") prints


def test_a_thread_still_running_is_waited_for(tmp_path):
    done = _run(tmp_path, "3", thread=True)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "marker.thread").read_text() == "done"
    assert (tmp_path / "marker").read_text() == "handler ran"


def test_an_unexpected_exception_keeps_its_traceback(tmp_path):
    done = _run(tmp_path, "raise")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr
    assert (tmp_path / "marker").read_text() == "handler ran"


NESTED = textwrap.dedent("""
    import sys
    from vffn_pretrain.process import exits
    from vffn_pretrain.process.exits import run_and_exit_quickly
    exits.HEAVY_MODULES = ("sys",)  # as if torch were loaded

    def command():  # a module's own quick exit, run inside another (launch/record_exit.py runs the trainer so)
        sys.exit(3)

    def recording():
        try:
            run_and_exit_quickly(command)
        except SystemExit as e:
            open(sys.argv[1], "w").write(f"recorded {e.code}")
            raise

    run_and_exit_quickly(recording)
""")


def test_inside_another_call_only_the_outer_one_exits(tmp_path):
    done = subprocess.run([sys.executable, "-c", NESTED, str(tmp_path / "record")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "record").read_text() == "recorded 3"


TEAR_DOWN = textwrap.dedent("""
    import sys
    from vffn_pretrain.process import exits

    class TornDown:  # its __del__ runs when the interpreter tears its modules down, not at os._exit
        def __del__(self):
            sys.stderr.write("torn down")

    keep = TornDown()
    if sys.argv[2] == "heavy":
        exits.HEAVY_MODULES = ("sys",)  # as if torch were loaded
    exits.run_and_exit_quickly(lambda: sys.exit(3))
""")


@pytest.mark.parametrize("heavy", [True, False])
def test_the_tear_down_is_skipped_only_after_a_heavy_import(tmp_path, heavy):
    """Nothing heavy loaded (a `--help`, a config error before torch is imported): the normal exit."""
    done = subprocess.run([sys.executable, "-c", TEAR_DOWN, "-", "heavy" if heavy else "-"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert ("torn down" in done.stderr) is not heavy
