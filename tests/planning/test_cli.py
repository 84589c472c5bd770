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


def _write(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


RATES = {"seconds_per_flop": {"forward": {"default": 1e-9}, "backward": {"default": 1e-9}}}


def _stats(tmp_path, hist):
    """A checkpoint directory whose loop_stats.json gives every layer `hist`."""
    from vffn_pretrain.planning.loops import write_loop_stats

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    write_loop_stats(ckpt, 5, None, {str(n): hist for n in range(1, 7)})
    return str(ckpt)


def _metrics(tmp_path, layers):
    return _write(tmp_path / "metrics.jsonl", "\n".join([json.dumps({"step": 1, "loss": 3.0}),
                                                          json.dumps({"step": 2, "layers": layers})]))


HOSTILE = [  # (arguments, what the one line must name)
    (["--dp", "0"], "--dp"), (["--dp", "-1"], "--dp"), (["--dp", "x"], "--dp"), (["--dp", "10000000"], "--dp"),
    (["--micro-batches", "0"], "--micro-batches"), (["--micro-batches", "100000"], "--micro-batches"),
    (["--micro-batches", "x"], "--micro-batches"),
    (["--bytes-per-param", "-5"], "--bytes-per-param"), (["--bytes-per-param", "nan"], "--bytes-per-param"),
    (["--bytes-per-param", "0"], "--bytes-per-param"), (["--memory-gib", "nan"], "--memory-gib"),
    (["--memory-gib", "inf"], "--memory-gib"), (["--memory-gib", "-1"], "--memory-gib"),
    (["--shared-cores", "100000"], "--shared-cores"), (["--device", "TPU"], "--device"), (["--foo"], "--foo"),
    (["--calibration", "{list}"], "must hold a JSON object"), (["--calibration", "{negative}"], "finite number >= 0"),
    (["--calibration", "{string_rate}"], "seconds_per_flop.forward.default"),
    (["--calibration", "{nan_rate}"], "finite number"), (["--calibration", "{no_key}"], "seconds_per_flop"),
    (["--calibration", "{bad_json}"], "not JSON"), (["--calibration", "{dir}"], "is a directory"),
    (["--calibration", "{binary}"], "binary.json: not JSON"),  # bytes that are not UTF-8: the file named
    (["--calibration", "{dir}/absent.json"], "does not exist"), (["--calibration", "/dev/zero"], "regular file"),
    (["--calibration", "{bad_slowdown_key}"], "shared_slowdown"),
    (["--metrics", "{dir}/absent.jsonl"], "--metrics"), (["--metrics", "{dir}"], "--metrics"),
    (["--metrics", "{metrics_text_hist}"], "loop_hist must be a list of numbers"),
    (["--metrics", "{metrics_short_hist}"], "ffn.max_loops is 4"),
    (["--metrics", "{metrics_negative}"], "finite and >= 0"), (["--metrics", "{metrics_layer}"], "layer 9"),
    (["--metrics", "{metrics_none}"], "no record"), (["--checkpoint", "{ckpt_other_max_loops}"], "ffn.max_loops"),
    (["--checkpoint", "{dir}/absent"], "--checkpoint"), (["--checkpoint", "{empty_dir}"], "no loop_stats.json"),
    (["model.num_layers=8", "parallel.pp=4", "parallel.vpp=2", "--micro-batches", "3"], "--micro-batches"),
    (["model.num_layers=8", "parallel.pp=4", "parallel.vpp=2", "--micro-batches", "6"], "multiple of PP = 4"),
    (["parallel.pp=3", "parallel.vpp=2"], "train.global_batch_size"),
    (["parallel.pp=2", "parallel.overlap_p2p_comm=true"], "parallel.overlap_p2p_comm"),
    (["parallel.pp=2", "parallel.overlap_p2p_comm=maybe"], "parallel.overlap_p2p_comm"),
    (["parallel.pp=2", "parallel.pipeline_layout='E(t|)*99999999L'"], "parallel.pipeline_layout"),
]


@pytest.mark.parametrize("extra,words", HOSTILE, ids=[" ".join(a) for a, _ in HOSTILE])
def test_hostile_input_is_one_line_naming_it_exit_2(capsys, tmp_path, extra, words):
    (tmp_path / "empty").mkdir()
    files = {
        "dir": str(tmp_path), "empty_dir": str(tmp_path / "empty"),
        "list": _write(tmp_path / "list.json", [1, 2]),
        "negative": _write(tmp_path / "neg.json", {"seconds_per_flop": {"forward": {"default": -1e-9},
                                                                        "backward": {"default": 1e-9}}}),
        "string_rate": _write(tmp_path / "str.json", {"seconds_per_flop": {"forward": {"default": "fast"},
                                                                          "backward": {"default": 1e-9}}}),
        "nan_rate": _write(tmp_path / "nan.json", '{"seconds_per_flop": {"forward": {"default": NaN}, '
                                                  '"backward": {"default": 1e-9}}}'),
        "no_key": _write(tmp_path / "nokey.json", {"device": "x"}),
        "bad_json": _write(tmp_path / "bad.json", "{bad"),
        "binary": str(tmp_path / "binary.json"),
        "bad_slowdown_key": _write(tmp_path / "slow.json", {**RATES, "shared_slowdown": {"two": 1.5}}),
        "metrics_text_hist": _metrics(tmp_path, {"1": {"loop_hist": ["a", "b", "c", "d"]}}),
        "ckpt_other_max_loops": _stats(tmp_path, [1, 2, 3, 4, 5, 6]),
    }
    files["metrics_short_hist"] = _metrics(tmp_path / "empty", {"2": {"loop_hist": [1, 2, 3]}})
    (tmp_path / "m3").mkdir()
    files["metrics_negative"] = _metrics(tmp_path / "m3", {"2": {"loop_hist": [1, -2, 3, 4]}})
    (tmp_path / "m4").mkdir()
    files["metrics_layer"] = _metrics(tmp_path / "m4", {"9": {"loop_hist": [1, 2, 3, 4]}})
    files["metrics_none"] = _write(tmp_path / "none.jsonl", json.dumps({"step": 1, "loss": 2.0}))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    args = [a.format(**files) for a in extra]
    if not any(a.startswith("parallel.pp") for a in args):
        args.append("parallel.pp=2")
    try:
        code = main([*SMALL, *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err


def test_json_carries_what_re_simulating_a_plan_needs(capsys):
    """items (embedding, each layer, head) and p2p_s, summed over a row's chunks and fed to the simulator of the
    row's code path, give the row's step time; the JSON says which path it is."""
    from vffn_pretrain.planning import layout
    from vffn_pretrain.planning.schedule import simulate

    for overlap, expect in (("auto", True), ("false", False)):
        assert main([*SMALL, "parallel.pp=2", "parallel.vpp=2", "--micro-batches", "4", "--json",
                     f"parallel.overlap_p2p_comm={overlap}", "parallel.pipeline_layout=Et|t|tt|ttL"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["overlap_p2p_comm"] is expect and ("without" in rep["schedule"]) is not expect
        assert [i["name"] for i in rep["items"]][::7] == ["embedding", "head"]
        assert len(rep["items"]) == 8
        for row in rep["plans"]:
            cuts = layout.read(row["layout"], 2, 6)
            fwd = [sum(i["forward_s"] for i in rep["items"][a:b]) for a, b in zip(cuts, cuts[1:])]
            bwd = [sum(i["backward_s"] for i in rep["items"][a:b]) for a, b in zip(cuts, cuts[1:])]
            sim = simulate(fwd, bwd, 2, 4, rep["p2p_s"], overlap_p2p_comm=expect)
            assert sim.step_time == pytest.approx(row["step_time_s"], rel=1e-12)


def test_any_layout_the_trainer_accepts_is_evaluated(capsys):
    """A chunk holding only the embedding, megatron's repeat syntax, and more chunks than layers (which the
    planner's search cannot fill: the given layout is still timed)."""
    assert main([*SMALL, "parallel.pp=2", "parallel.pipeline_layout='E|ttttttL'", "--json"]) == 0
    given = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plans"]}["given"]
    assert given["stages"][0]["layers"] == [0] and given["stages"][0]["forward_s"] == 0.0
    assert main([*SMALL, "parallel.pp=2", "parallel.pipeline_layout='E|(t|)*6L'", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "no planned layout" in rep["note"] and [r["name"] for r in rep["plans"]] == ["given"]
    assert rep["plans"][0]["layout"] == "E|t|t|t|t|t|t|L"


def test_micro_batches_flag_plans_for_that_count(capsys):
    """The config's own global batch gives 8 micro-batches, which PP 3 with VPP refuses; --micro-batches 6
    plans for 6 instead of failing on the config's count."""
    assert main([*SMALL, "model.num_layers=6", "parallel.pp=3", "parallel.vpp=2", "--micro-batches", "6",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["micro_batches"] == 6
