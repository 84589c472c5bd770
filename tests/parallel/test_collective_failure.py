"""collective_failure.describe: a collective that failed because another rank is gone is one line; anything
else (this rank's own error, an error joining the world) stays an error of its own. The real gloo failure (a
worker killed mid-run) is in launch/test_torchrun.py::test_a_worker_killed_mid_run_ends_the_run_with_one_line_per_cause."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from vffn_pretrain.parallel.collective_failure import describe
from vffn_pretrain.training.signals import FAILED, StopSignals

RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:30603: "
         "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")
TIMEOUT = ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 60000ms for recv "
           "operation to complete")
NCCL_REMOTE = ("NCCL error in: ProcessGroupNCCL.cpp:2042, remote process exited or there was a network error, "
               "NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a remote "
               "process exiting prematurely.")


def test_a_lost_peer_is_one_line_without_gloos_source_location():
    line = describe(RuntimeError(RESET), 30, collectives_started=True)
    assert line.startswith("lost contact with another rank in a collective (Read error [127.0.0.1]:30603: "
                           "Connection reset by peer): it stopped first"), line
    assert "pair.cc" not in line and "\n" not in line and line.endswith("the checkpoints already saved are intact")
    assert describe(dist.DistBackendError(NCCL_REMOTE), 30, collectives_started=True).startswith(
        "lost contact with another rank in a collective (ncclRemoteError: A call failed possibly due to a network "
        "error or a remote process exiting prematurely)")


def test_a_collective_timeout_names_the_key_and_its_value():
    line = describe(RuntimeError(TIMEOUT), 0.5, collectives_started=True)
    assert line.startswith("another rank did not answer within parallel.collective_timeout_min (0.5 min) (Timed out "
                           "waiting 60000ms for recv operation to complete)"), line


@pytest.mark.parametrize("error", [
    dist.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error\nCuda failure 'out of "
                          "memory'"),  # this rank's own: a DistBackendError is not a lost peer by its type
    dist.DistBackendError("NCCL error: invalid usage"),
    RuntimeError("[gloo/transport/tcp/pair.cc:446] op.preamble.length <= op.nbytes. 16 vs 4"),  # a mismatch: a bug
    RuntimeError("CUDA out of memory"), ValueError("Connection reset by peer"), RuntimeError(""), KeyError("x"),
])
def test_this_ranks_own_errors_are_not_explained_away(error):
    assert describe(error, 30, collectives_started=True) is None


def test_before_the_runs_collectives_nothing_is_a_lost_peer():
    """Joining the world says its own problem (parallel.init_timeout_s, MASTER_ADDR), not collective_timeout_min."""
    join = RuntimeError("rank 1 of 2 could not join the process group at 127.0.0.1:29500 within 5 s "
                        "(parallel.init_timeout_s): RuntimeError: [gloo/transport/tcp/pair.cc:1] Timed out waiting")
    assert describe(join, 30, collectives_started=False) is None
    assert describe(RuntimeError(RESET), 30, collectives_started=False) is None


def test_the_runs_collectives_start_with_their_timeout():
    code = textwrap.dedent("""
        import datetime, torch.distributed as dist
        from vffn_pretrain.parallel import init
        assert not init.collectives_started()
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{init.free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=30))
        init.set_collective_timeout(1.0)
        assert init.collectives_started()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def _stop_after_a_failure() -> StopSignals:
    stop = StopSignals()
    stop.start_run()
    stop.phase, stop.immediate = FAILED, False
    return stop


def test_a_stop_signal_after_the_run_failed_promises_no_save(capsys):
    """torchrun sends SIGTERM to the survivors of a killed worker, often after their error is on its way out:
    the line must not promise a checkpoint."""
    stop = _stop_after_a_failure()
    stop._handle(signal.SIGTERM, None)
    err = capsys.readouterr().err
    assert err.strip() == "SIGTERM received after the run failed; the run's exit code stands", err
    assert stop.signal_name is None  # no stop recorded


def test_ctrl_c_after_the_run_failed_aborts_at_once(monkeypatch, capsys):
    from vffn_pretrain.training import signals

    exits = []
    monkeypatch.setattr(signals.os, "_exit", exits.append)
    _stop_after_a_failure()._handle(signal.SIGINT, None)
    assert exits == [130] and "SIGINT after the run failed: aborting" in capsys.readouterr().err


@pytest.mark.parametrize("raised, phase", [(RuntimeError("boom"), FAILED), (KeyboardInterrupt(), "start-up")])
def test_an_error_leaving_the_run_marks_it_failed(monkeypatch, raised, phase):
    """trainer.run sets the FAILED phase when an error leaves it (set-up or training); an orderly stop (Ctrl-C
    before training, a stop signal) keeps its phase."""
    from vffn_pretrain.training import trainer as trainer_module

    seen = {}

    class Broken(trainer_module.Trainer):
        def __init__(self, cfg):
            self.stop = StopSignals()
            self.stop.start_run()

        def setup(self):
            raise raised

        def release(self, failed):  # what the run's clean-up sees
            seen["phase"] = self.stop.phase

    monkeypatch.setattr(trainer_module, "Trainer", Broken)
    with pytest.raises(type(raised)):
        trainer_module.run(None)
    assert seen["phase"] == phase
