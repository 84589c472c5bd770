"""`vffn-plan calibrate` at tiny size: it writes the JSON `Timing.load` reads, with a rate per FFN kind of the
pattern that reproduces the measured layer times through the cost model, and a measured gloo P2P figure."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.faults.processes import run_in_session
from vffn_pretrain.planning import costs
from vffn_pretrain.planning.timing import Timing

TINY = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=256", "model.num_attention_heads=4",
        "model.vocab_size=512", "train.seq_length=32", "train.global_batch_size=8", "train.micro_batch_size=2",
        "ffn.layers='dense,versatile'"]


def _calibrate(tmp_path, *args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    return run_in_session([sys.executable, "-m", "vffn_pretrain.planning.cli", "calibrate", *args], timeout=300,
                          env=env, cwd=tmp_path)


def test_calibration_file_reproduces_the_measured_layer_times(tmp_path):
    out = _calibrate(tmp_path, "--out", "cal.json", "--rounds", "2", "--shared-ranks", "2", "--sharing-seconds",
                     "0.3", *TINY)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["measured"]
    timing = Timing.load(tmp_path / "cal.json")
    assert set(timing.forward) == {"dense", "versatile", "default", "head"}
    for kind in ("dense", "versatile"):
        # The layer's cost is the second layer's share of a micro-batch inside whole training steps.
        steps = report[kind]["steps_s"]
        per_micro = {n: (steps[f"{n} layers x 4 micro-batches"] - steps[f"{n} layers x 1 micro-batches"]) / 3
                     for n in (1, 3)}
        in_situ = report[kind]["forward_s"] + report[kind]["backward_s"]
        assert in_situ == pytest.approx((per_micro[3] - per_micro[1]) / 2, rel=1e-9, abs=1e-12)
        item = costs.ItemCost("t", kind, report[kind]["forward_flops"], report[kind]["backward_flops"], 0, 0, 0)
        assert abs(timing.forward_s(item) - report[kind]["forward_s"]) <= 1e-9 * report[kind]["forward_s"]
        assert abs(timing.backward_s(item) - report[kind]["backward_s"]) <= 1e-9 * report[kind]["backward_s"]
        assert report[kind]["forward_s"] > 0
    assert report["p2p"]["latency_s"] > 0 and timing.p2p_latency_s == report["p2p"]["latency_s"]
    assert timing.optimizer_seconds_per_param == report["step"]["once_per_step_s_per_param"] > 0
    # Sharing: one rank alone is the reference; two at once on this host are never faster.
    assert timing.shared_slowdown[1] == 1.0 and timing.shared_slowdown[2] >= 1.0
    assert report["shared_slowdown"] == {str(k): x for k, x in timing.shared_slowdown.items()}


@pytest.mark.parametrize("args,key", [(["--shared-ranks", "-1"], "--shared-ranks"),
                                      (["--shared-ranks", "2", "--sharing-seconds", "inf"], "--sharing-seconds"),
                                      (["--rounds", "0"], "--rounds"), (["--out", "."], "--out"),
                                      (["--out", "no/such/dir/cal.json"], "--out"), (["--out", "/dev/null"], "--out"),
                                      (["--rounds", "x"], "--rounds"), (["--rounds", "100000"], "--rounds"),
                                      (["--sharing-seconds", "nan"], "--sharing-seconds"), (["--bogus"], "--bogus")])
def test_bad_option_is_one_line_exit_2(tmp_path, args, key):
    """Before anything is measured (or megatron imported): one line on stderr naming the option, exit 2."""
    out = _calibrate(tmp_path, *args, *TINY)
    assert out.returncode == 2 and key in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "calibration.json").exists()


def test_bad_override_is_one_line_exit_2(tmp_path):
    out = _calibrate(tmp_path, *TINY[:-1], "ffn.layers='dense*3'")
    assert out.returncode == 2 and "ffn.layers" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "calibration.json").exists()


def test_ctrl_c_during_the_sharing_measurement_exits_130_and_leaves_nothing(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the sharing workers start up (still
    importing torch: the moment a worker that set its own handler would print a KeyboardInterrupt traceback):
    one line, exit 130, no calibration file, no worker left behind."""
    import signal
    import time

    from tests.faults.processes import children, wait_until_gone

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "vffn_pretrain.planning.cli", "calibrate", "--out", "cal.json",
                             "--rounds", "1", "--no-p2p", "--shared-ranks", "2", "--sharing-seconds", "120", *TINY],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:  # the sharing workers have started
            time.sleep(0.5)
        assert len(children(proc.pid)) >= 2, "the sharing workers never started"
        workers = children(proc.pid)
        for pid in workers:  # from their first instruction, not once their imports are done
            assert _ignores_sigint(pid), f"process {pid} does not ignore SIGINT"
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err and "Traceback" not in err
        assert not list(tmp_path.glob("cal.json*"))
        for pid in [proc.pid, *workers]:
            assert not wait_until_gone(pid, 30)
    finally:  # a failed assertion must not leave the calibration (and its workers) running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _ignores_sigint(pid: int) -> bool:
    """Whether the process ignores or blocks SIGINT (Linux /proc masks; multiprocessing's resource tracker blocks
    it); a process already gone counts."""
    import signal

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigIgn:", "SigBlk:"))]
    return any(mask >> (signal.SIGINT - 1) & 1 for mask in masks)


def _dies(code: int) -> None:
    os._exit(code)


def _waits_forever() -> None:
    import time

    time.sleep(3600)


@pytest.mark.parametrize("targets,words", [((_dies, _waits_forever), "died (exit 3)"),
                                           ((_dies,), "exited without reporting")])
def test_a_dead_measurement_worker_fails_the_measurement_and_none_survive(targets, words):
    """A worker that dies must not leave the others waiting (at the sharing barrier, in gloo's rendezvous), and
    no worker outlives the measurement; `vffn-plan calibrate` turns the error into one line, exit 1."""
    import multiprocessing as mp

    from vffn_pretrain.planning.calibrate import MeasurementError, _run_workers

    ctx = mp.get_context("spawn")
    code = 3 if len(targets) > 1 else 0
    procs = [ctx.Process(target=t, args=(code,) if t is _dies else (), daemon=True) for t in targets]
    with pytest.raises(MeasurementError, match=re.escape(words)):
        _run_workers(procs, ctx.Queue(), 1, "test")
    assert not any(p.is_alive() for p in procs)


def calibrate_under_device_audit(overrides: list[str]) -> dict:
    """`calibrate` (one round, no P2P) on this rank under the device audit (testing/device_audit.py: on a GPU a
    host tensor reaching a module is a crash); the violations, the precision it measured in and the dtype of the
    models it built."""
    from megatron.core import parallel_state as ps

    from vffn_pretrain.config.overrides import compose_config
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.model import gpt
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import device, seed_all, setup_model_parallel
    from vffn_pretrain.planning.calibrate import calibrate
    from vffn_pretrain.testing.device_audit import device_audit

    cfg = load_run_config(compose_config([*overrides, "parallel.tp=1", "parallel.pp=1"]), world_size=1)
    setup_model_parallel(ParallelConfig())
    seed_all(0)
    built, original = [], gpt.build_model

    def recording_build(*args, **kwargs):
        chunks = original(*args, **kwargs)
        built.append({p.dtype for c in chunks for p in c.parameters()})
        return chunks

    gpt.build_model = recording_build
    try:
        with device_audit(device(), check_modules=True) as audit:
            _, report = calibrate(cfg, rounds=1, p2p=False)
    finally:
        gpt.build_model = original
        ps.destroy_model_parallel()
    return {"violations": audit.violations, "precision": report.get("precision"), "built": built}


def test_calibration_runs_on_the_model_device_in_the_run_precision(rank_pools):
    out = rank_pools(1).run(calibrate_under_device_audit, [*TINY[:-1], "system.precision=bf16"])[0]
    assert out["violations"] == [], out["violations"][:5]
    assert out["precision"] == "bfloat16"
    assert out["built"] and all(dtypes == {torch.bfloat16} for dtypes in out["built"])


def test_timestamps_wait_for_the_gpu(monkeypatch):
    from vffn_pretrain.planning import calibrate

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("synchronize"))
    calibrate.now()
    assert calls == ["synchronize"]


def test_a_layer_time_lost_in_the_noise_is_measured_again_then_an_error(monkeypatch):
    """Three layers timed no slower than one (a busy host, a tiny model) gave a layer cost of 0, a calibration
    that makes layers free. Now: measured again with twice, then four times the rounds, then one line."""
    from tests.training.trainer_runs import run_config
    from vffn_pretrain.planning import calibrate

    asked = []

    def step_times(model_cfg, ffn_cfg, train_cfg, rounds, dtype):
        asked.append(rounds)
        return {"seconds": {(n, k): 0.1 * k for n in calibrate.LAYERS for k in calibrate.MICRO_BATCHES},
                "params": {n: 1000 for n in calibrate.LAYERS}}

    monkeypatch.setattr(calibrate, "_layer_seconds", lambda *a: (0.01, 0.02))
    monkeypatch.setattr(calibrate, "_step_times", step_times)
    cfg = run_config([*TINY[:-1], "data.tokenizer=null:512"])
    with pytest.raises(calibrate.MeasurementError, match=r"^the time of a versatile layer was lost in this machine's "
                                                         r"noise \(3 layers measured no slower than 1, also with 12 "
                                                         r"rounds\): use more --rounds"):
        calibrate.calibrate(cfg, rounds=3, p2p=False)
    assert asked == [3, 6, 12]
