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
])
def test_bad_input_is_one_line_exit_2(capsys, extra, key):
    assert main([*SMALL, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err
