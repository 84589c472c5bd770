"""parallel.pipeline_layout=auto: the trainer plans the layout at start-up. On a mixed tiny model whose plan
differs from the even split, a PP=2 run computes the single-rank losses (fp32, 1e-5 relative); impossible
requests are start-up errors naming the key, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.training import trainer_runs as cases
from vffn_pretrain.config.errors import ConfigError

# Two versatile layers (about 3x a dense layer's work) last: the even split 2|2 puts both on the last stage.
PATTERN = "ffn.layers='dense*2,versatile*2'"


def _overrides(synthetic_data, tmp, name, *extra):
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp / 'cache'}",
            f"run_dir={tmp / name}", "checkpoint.interval=1000", "train.max_steps=3", PATTERN, *extra]


def planned(overrides: list[str], world_size: int) -> str | None:
    """The layout the trainer's rank 0 plans for this config (config loading itself leaves "auto" alone)."""
    from vffn_pretrain.planning.auto import resolve_auto_layout

    cfg = cases.run_config(overrides, world_size=world_size)
    assert cfg.parallel.pipeline_layout == "auto"
    return resolve_auto_layout(cfg)


def test_auto_plans_away_from_the_even_split(tmp_path):
    layout = planned([*cases.BASE, PATTERN, f"run_dir={tmp_path}", "parallel.pp=2",
                      "parallel.pipeline_layout=auto"], world_size=2)
    assert layout == "Ettt|tL"  # one versatile layer per stage
    even = planned([*cases.BASE, "ffn=dense", f"run_dir={tmp_path}", "parallel.pp=2",
                    "parallel.pipeline_layout=auto"], world_size=2)
    assert even == "Ett|ttL"  # uniform layers: the even split


def test_auto_with_vpp_gives_an_interleaved_layout(tmp_path):
    layout = planned([*cases.BASE, "model.num_layers=8", "ffn.layers='dense*4,versatile*4'",
                      f"run_dir={tmp_path}", "parallel.pp=2", "parallel.vpp=2",
                      "parallel.pipeline_layout=auto"], world_size=2)
    assert layout.count("|") == 3


def test_auto_at_pp2_matches_single_rank(rank_pools, synthetic_data, tmp_path):
    single = rank_pools(1).run(cases.train, _overrides(synthetic_data, tmp_path, "single"))[0]
    auto = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "auto", "parallel.pp=2",
                                                     "parallel.pipeline_layout=auto"))[0]
    ref = [single["losses"][s] for s in (1, 2, 3)]
    np.testing.assert_allclose([auto["losses"][s] for s in (1, 2, 3)], ref, rtol=1e-5)


@pytest.mark.parametrize("extra, key, words", [
    (["parallel.pp=8"], "parallel.pp", "8 pipeline chunks for 4 layers"),
    (["parallel.pp=2", "parallel.plan_memory_gib=0.0001"], "parallel.plan_memory_gib", "short by"),
    (["parallel.pp=2", "parallel.plan_memory_gib=-1"], "parallel.plan_memory_gib", "positive"),
    (["parallel.pp=2", "parallel.plan_memory_gib=inf"], "parallel.plan_memory_gib", "finite"),
    (["parallel.pp=2", "parallel.plan_costs=5"], "parallel.plan_costs", "a string"),
    (["parallel.pp=2", "parallel.plan_costs={list}"], "parallel.plan_costs", "JSON object"),
    (["parallel.pp=2", "parallel.plan_costs={negative}"], "parallel.plan_costs", ">= 0"),
    (["parallel.pp=2", "parallel.plan_costs={tmp}"], "parallel.plan_costs", "directory"),
    (["parallel.pp=2", "parallel.plan_costs={tmp}/absent.json"], "parallel.plan_costs", "does not exist"),
    (["parallel.pp=2", "parallel.vpp=2", "train.global_batch_size=2"], "train.global_batch_size", "at least PP"),
])
def test_impossible_requests_name_the_key(tmp_path, extra, key, words):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "negative.json").write_text(json.dumps(
        {"seconds_per_flop": {"forward": {"default": -1.0}, "backward": {"default": 1e-9}}}))
    files = {"list": tmp_path / "list.json", "negative": tmp_path / "negative.json", "tmp": tmp_path}
    world = 2 if "parallel.vpp=2" in extra else 8
    with pytest.raises(ConfigError) as err:
        planned([*cases.BASE, PATTERN, f"run_dir={tmp_path}", "parallel.pipeline_layout=auto",
                 *(x.format(**files) for x in extra)], world_size=world)
    assert err.value.key == key and words in str(err.value)


@pytest.mark.parametrize("extra, key, words", [
    (["parallel.plan_memory_gib=0.0001"], "parallel.plan_memory_gib", "short by"),  # found by the plan on rank 0
    (["parallel.plan_costs={list}"], "parallel.plan_costs", "JSON object"),  # once a traceback on every rank
    (["parallel.vpp=2", "train.global_batch_size=2"], "train.global_batch_size", "at least PP"),  # megatron refuses
])
def test_bad_auto_request_exits_2_with_one_line_from_rank_0(synthetic_data, tmp_path, extra, key, words):
    """The plan runs on rank 0 once the world exists; its error reaches every rank: one line, exit 2."""
    from vffn_pretrain.parallel.init import free_port

    (tmp_path / "list.json").write_text("[1]")
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONWARNINGS": "ignore"}
    args = [*_overrides(synthetic_data, tmp_path, "bad"), "parallel.pp=2", "parallel.pipeline_layout=auto",
            *(x.format(list=tmp_path / "list.json") for x in extra)]
    ranks = [subprocess.Popen([sys.executable, "-m", "vffn_pretrain.train", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], outs
    lines = [line for line in outs[0][1].splitlines() if key in line]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in outs[0][1], outs[0][1]
    assert key not in outs[1][1] and "Traceback" not in outs[1][1]  # rank 1 stays quiet
    assert not (tmp_path / "bad").exists()  # nothing written


def test_resume_switches_layout_when_the_plan_is_faster_by_more_than_the_threshold(rank_pools, synthetic_data,
                                                                                   tmp_path):
    """A PP=2 run on the even split saves its loop statistics with the checkpoint; resumed with
    pipeline_layout=auto it moves to the planned layout (versatile layers are ~3x a dense one's work) and computes
    the single-rank losses; with a threshold above the predicted gain it keeps the checkpoint's layout."""
    first = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "r", "parallel.pp=2",
                                                      "parallel.pipeline_layout=Ett|ttL", "train.max_steps=4",
                                                      "train.exit_interval=2", "checkpoint.interval=2"))[0]
    assert first["summary"]["steps"] == 2
    ckpt = tmp_path / "r" / "checkpoints" / "step_0000002"
    stats = json.loads((ckpt / "loop_stats.json").read_text())
    assert stats["pipeline_layout"] == "Ett|ttL" and sorted(stats["loop_hist"]) == ["3", "4"]

    def chosen(*extra):
        return planned(_overrides(synthetic_data, tmp_path, "r", "parallel.pp=2", "parallel.pipeline_layout=auto",
                                  "train.max_steps=4", *extra), world_size=2)

    assert chosen() == "Ettt|tL"
    assert chosen("parallel.replan_threshold=100") == "Ett|ttL"
    assert chosen("checkpoint.resume=false") == "Ettt|tL"  # a fresh start plans without the checkpoint

    resumed = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "r", "parallel.pp=2",
                                                        "parallel.pipeline_layout=auto", "train.max_steps=4"))[0]
    assert resumed["summary"]["steps"] == 4
    single = rank_pools(1).run(cases.train, _overrides(synthetic_data, tmp_path, "one", "train.max_steps=4"))[0]
    np.testing.assert_allclose([resumed["losses"][s] for s in (3, 4)], [single["losses"][s] for s in (3, 4)],
                               rtol=1e-5)


def test_replan_decision():
    """Keep the saved layout within the threshold, switch beyond it, and replan whatever the threshold when the
    saved layout no longer fits the request."""
    from vffn_pretrain.planning import planner
    from vffn_pretrain.planning.auto import replan_decision
    from vffn_pretrain.planning.costs import ItemCost
    from vffn_pretrain.planning.timing import Timing

    unit = Timing({"default": 1.0}, {"default": 1.0})
    layers = [ItemCost("t", "dense", 1.0, 2.0, 1.0, 1.0, 1.0)] * 4 + [ItemCost("t", "versatile", 3.0, 6.0, 1.0, 1.0, 1.0)] * 4
    req = planner.PlanRequest([ItemCost("E", "embedding", 0, 0, 0, 0, 1.0), *layers,
                               ItemCost("L", "head", 0, 0, 0, 0, 1.0)], 2, 1, 8, unit)
    best = planner.plan(req)
    even = planner.evaluate(req, (4, 4))
    gain = even.step_time / best.step_time - 1
    assert best.layout != even.layout and gain > 0.2
    assert replan_decision(req, best, even.layout, 0.05)[0] == best.layout
    layout, why = replan_decision(req, best, even.layout, gain + 0.01)
    assert layout == even.layout and "kept" in why
    assert replan_decision(req, best, "Ett|tt|tt|ttL", 100.0)[0] == best.layout  # PP=4 layout at PP=2
    assert replan_decision(req, best, None, 100.0)[0] == best.layout
    # Under a budget the best plan just fits, a split that needs more memory is left whatever the threshold.
    tight = planner.PlanRequest(req.items, 2, 1, 8, unit, memory_budget=max(best.memory) * 1.0001,
                                allow_recompute=False)
    over = next(s for s in planner._compositions(8, 2) if not planner.evaluate(tight, s).feasible)
    layout, why = replan_decision(tight, planner.plan(tight), planner.layout_string(over), 100.0)
    assert layout == best.layout and "over parallel.plan_memory_gib" in why
