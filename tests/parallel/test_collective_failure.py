"""collective_failure.describe: a collective that failed because another rank is gone is one line, anything else
stays an error of its own. The real gloo failure (a worker killed mid-run) is in
launch/test_torchrun.py::test_a_worker_killed_mid_run_ends_the_run_with_one_line_per_cause."""

from __future__ import annotations

import signal

import pytest
import torch.distributed as dist

from vffn_pretrain.parallel.collective_failure import describe
from vffn_pretrain.training.signals import FAILED, StopSignals

RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:30603: "
         "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")
TIMEOUT = ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 60000ms for recv "
           "operation to complete")


def test_a_lost_peer_is_one_line_without_gloos_source_location():
    line = describe(RuntimeError(RESET), 30)
    assert line.startswith("lost contact with another rank in a collective (Read error [127.0.0.1]:30603: "
                           "Connection reset by peer): it stopped first"), line
    assert "pair.cc" not in line and "\n" not in line and line.endswith("the checkpoints already saved are intact")


def test_a_collective_timeout_names_the_key_and_its_value():
    line = describe(RuntimeError(TIMEOUT), 0.5)
    assert line.startswith("another rank did not answer within parallel.collective_timeout_min (0.5 min) (Timed out "
                           "waiting 60000ms for recv operation to complete)"), line


@pytest.mark.parametrize("kind", ["DistNetworkError", "DistStoreError", "DistBackendError"])
def test_torchs_distributed_errors_are_lost_peers(kind):
    assert describe(getattr(dist, kind)("Connection closed by peer")).startswith("lost contact with another rank")


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), ValueError("gloo/transport"),
                                   RuntimeError(""), KeyError("x")])
def test_anything_else_is_not_explained_away(error):
    assert describe(error) is None


def test_a_stop_signal_after_the_run_failed_promises_no_save(capsys):
    """torchrun sends SIGTERM to the survivors of a killed worker, often after their error is on its way out:
    the line must not promise a checkpoint."""
    stop = StopSignals()
    stop.start_run()
    stop.phase, stop.immediate = FAILED, False
    stop._handle(signal.SIGTERM, None)
    err = capsys.readouterr().err
    assert err.strip() == "SIGTERM received after the run failed; the run's exit code stands", err
    assert stop.signal_name is None  # no stop recorded
