"""Class 5 (signals) for the tools that only print: `vffn-info` and `vffn-plan` stopped by Ctrl-C, SIGTERM or
SIGHUP at any point of their work say one line and exit 130, with no traceback and nothing on stdout.

The stop is injected deterministically: a trace function raises the interrupt at the K-th call of a function
of this project, Hydra or OmegaConf, for K spread over a whole run (counted in an uninterrupted run first). The
interrupt is what `process/interrupts.interruptible()` raises for a signal (Ctrl-C is a plain
KeyboardInterrupt), so this covers the moment each signal can arrive without racing a real one against start-up.
"""

from __future__ import annotations

import sys

import pytest

from vffn_pretrain.process.interrupts import Interrupted

WATCHED = ("vffn_pretrain", "hydra", "omegaconf")


def _info(argv):
    from vffn_pretrain.info import main

    saved = sys.argv
    sys.argv = ["vffn-info", *argv]
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved


def _plan(argv):
    from vffn_pretrain.planning.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


TOOLS = {
    "vffn-info": (_info, ["model=tiny", "ffn=versatile"]),
    "vffn-plan": (_plan, ["model=tiny", "parallel.pp=2", "train.global_batch_size=8", "train.micro_batch_size=1"]),
}


def _run_traced(call, argv, stop_at: int | None, stop: BaseException | None):
    """Run the tool, counting calls into WATCHED modules; raise `stop` at call number `stop_at`. Returns (exit
    status, calls counted)."""
    calls = 0

    def tracer(frame, event, _arg):
        nonlocal calls
        if event == "call" and str(frame.f_globals.get("__name__", "")).startswith(WATCHED):
            calls += 1
            if calls == stop_at:
                raise stop
        return None

    sys.settrace(tracer)
    try:
        status = call(argv)
    except KeyboardInterrupt as escaped:  # a failure of this test, not a stop of the test session
        pytest.fail(f"the tool let {escaped!r} escape at call {stop_at} (a traceback for the user)")
    finally:
        sys.settrace(None)
    return status, calls


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_stop_at_any_point_is_one_line_and_exit_130(tool, capsys):
    call, argv = TOOLS[tool]
    call(argv)  # the first run also imports and caches: count the calls of the second
    status, total = _run_traced(call, argv, None, None)
    assert status == 0, capsys.readouterr().err
    capsys.readouterr()
    assert total > 100
    for fraction in (0.02, 0.25, 0.5, 0.75, 0.98):
        for stop, line in ((KeyboardInterrupt(), f"{tool}: interrupted"),
                           (Interrupted("SIGTERM"), f"{tool}: interrupted by SIGTERM"),
                           (Interrupted("SIGHUP"), f"{tool}: interrupted by SIGHUP")):
            status, calls = _run_traced(call, argv, max(1, int(total * fraction)), stop)
            out, err = capsys.readouterr()
            assert calls >= int(total * fraction), f"{tool}: this run made {calls} calls, the counted one {total}"
            where = f"{tool} stopped at call {int(total * fraction)} of {total} by {stop!r}"
            assert status == 130, f"{where}: exit {status}; stderr: {err[-2000:]}"
            assert err.splitlines() == [line], f"{where}: stderr {err[-2000:]}"
            assert out == "", where
