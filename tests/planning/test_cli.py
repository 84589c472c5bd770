"""`vffn-plan`: the table and JSON, and bad input as one line naming the key with exit code 2."""

from __future__ import annotations

import json

import pytest

from vffn_pretrain.planning.cli import main

SMALL = ["model.num_layers=6", "model.hidden_size=64", "model.ffn_hidden_size=256", "model.num_attention_heads=4",
         "train.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=16"]


def test_json_plan_covers_every_layer(capsys):
    assert main([*SMALL, "parallel.pp=4", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    planned = rep["plans"][0]
    assert rep["micro_batches"] == 8 and planned["name"] == "planned"
    assert sum(sum(s["layers"]) for s in planned["stages"]) == 6
    assert planned["step_time_s"] >= rep["lower_bound_s"]
    assert planned["layout"].startswith("E") and planned["layout"].endswith("L")


@pytest.mark.parametrize("extra,key", [
    (["parallel.pp=8"], "parallel.pp"),
    (["parallel.pp=2", "parallel.pipeline_layout=Ettt|ttL"], "parallel.pipeline_layout"),
    (["parallel.pp=2", "--memory-gib", "0.0001"], "short by"),
    (["parallel.pp=2", "--checkpoint", "/nonexistent"], "--checkpoint"),
    (["parallel.pp=2", "--shared-cores", "0"], "--shared-cores"),
    (["parallel.pp=2", "--calibration", "{bad_slowdown}"], "--calibration"),
    (["parallel.pp=abc"], "parallel.pp"),
    (["ffn.layers=dense,versatile"], "overrides"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, extra, key):
    bad = tmp_path / "bad_slowdown.json"  # a calibration whose sharing table claims sharing speeds ranks up
    bad.write_text(json.dumps({"seconds_per_flop": {"forward": {"default": 1e-9}, "backward": {"default": 1e-9}},
                               "shared_slowdown": {"1": 1.0, "2": 0.5}}))
    assert main([*SMALL, *(a.format(bad_slowdown=bad) for a in extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err


def test_loop_mixes_from_a_checkpoint_move_the_plan(capsys, tmp_path):
    """A checkpoint whose first layers sampled L_max loops and last layers one loop: the planned split puts
    fewer layers on the first stage than uniform mixes do."""
    from vffn_pretrain.planning.loops import write_loop_stats

    write_loop_stats(tmp_path, 10, "Ettt|tttL", {str(n): [0, 0, 0, 100] if n <= 3 else [100, 0, 0, 0]
                                                 for n in range(1, 7)})
    shape = ["model=354m", "model.num_layers=6", "train.micro_batch_size=1", "train.global_batch_size=16",
             "parallel.pp=2", "--json"]  # large enough that compute, not latency, decides (analytic H100 costs)
    assert main(shape) == 0
    uniform = json.loads(capsys.readouterr().out)["plans"][0]["stages"][0]["layers"]
    assert main([*shape, "--checkpoint", str(tmp_path)]) == 0
    skewed = json.loads(capsys.readouterr().out)["plans"][0]["stages"][0]["layers"]
    assert skewed[0] < uniform[0]


def test_a_measured_sharing_table_slows_ranks_that_share_cores(capsys, tmp_path):
    """--shared-cores with a calibration that measured sharing: two ranks on two cores are no longer free of
    each other (lossless sharing would give the dedicated figure)."""
    rates = {"seconds_per_flop": {"forward": {"default": 1e-9}, "backward": {"default": 1e-9}}}
    plain, measured = tmp_path / "plain.json", tmp_path / "measured.json"
    plain.write_text(json.dumps(rates))
    measured.write_text(json.dumps({**rates, "shared_slowdown": {"1": 1.0, "2": 1.5}}))
    step = {}
    for name, cal, extra in [("dedicated", plain, []), ("lossless", plain, ["--shared-cores", "2"]),
                             ("measured", measured, ["--shared-cores", "2"])]:
        assert main([*SMALL, "parallel.pp=2", "parallel.pipeline_layout=Ettt|tttL", "--json", "--calibration",
                     str(cal), *extra]) == 0
        step[name] = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plans"]}["given"]["step_time_s"]
    assert step["lossless"] == pytest.approx(step["dedicated"])
    assert step["dedicated"] * 1.05 < step["measured"] < step["dedicated"] * 1.5
