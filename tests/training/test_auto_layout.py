"""parallel.pipeline_layout=auto: the trainer plans the layout at start-up. On a mixed tiny model whose plan
differs from the even split, a PP=2 run computes the single-rank losses (fp32, 1e-5 relative); impossible
requests are start-up errors naming the key, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.training import cases
from vffn_pretrain.config_errors import ConfigError

# Two versatile layers (about 3x a dense layer's work) last: the even split 2|2 puts both on the last stage.
PATTERN = "ffn.layers='dense*2,versatile*2'"


def _overrides(synthetic_data, tmp, name, *extra):
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp / 'cache'}",
            f"run_dir={tmp / name}", "checkpoint.interval=1000", "train.max_steps=3", PATTERN, *extra]


def test_auto_plans_away_from_the_even_split(tmp_path):
    cfg = cases.run_config([*cases.BASE, PATTERN, f"run_dir={tmp_path}", "parallel.pp=2",
                            "parallel.pipeline_layout=auto"], world_size=2)
    assert cfg.parallel.pipeline_layout == "Ettt|tL"  # one versatile layer per stage
    assert cfg.parallel.vpp == 1
    even = cases.run_config([*cases.BASE, "ffn=dense", f"run_dir={tmp_path}", "parallel.pp=2",
                             "parallel.pipeline_layout=auto"], world_size=2)
    assert even.parallel.pipeline_layout == "Ett|ttL"  # uniform layers: the even split


def test_auto_with_vpp_gives_an_interleaved_layout(tmp_path):
    cfg = cases.run_config([*cases.BASE, "model.num_layers=8", "ffn.layers='dense*4,versatile*4'",
                            f"run_dir={tmp_path}", "parallel.pp=2", "parallel.vpp=2",
                            "parallel.pipeline_layout=auto"], world_size=2)
    assert cfg.parallel.vpp == 2 and cfg.parallel.pipeline_layout.count("|") == 3


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
])
def test_impossible_requests_name_the_key(tmp_path, extra, key, words):
    with pytest.raises(ConfigError) as err:
        cases.run_config([*cases.BASE, PATTERN, f"run_dir={tmp_path}", "parallel.pipeline_layout=auto", *extra],
                         world_size=8)
    assert err.value.key == key and words in str(err.value)


def test_bad_auto_request_exits_2_with_one_line(synthetic_data, tmp_path):
    # The error comes from the config, before any process group: rank 0 of a claimed world of 2 reports it.
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "PYTHONWARNINGS": "ignore"}
    args = [*_overrides(synthetic_data, tmp_path, "bad"), "parallel.pp=2", "parallel.pipeline_layout=auto",
            "parallel.plan_memory_gib=0.0001"]
    out = subprocess.run([sys.executable, "-m", "vffn_pretrain.train", *args], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if "parallel.plan_memory_gib" in line]
    assert len(lines) == 1 and "short by" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()  # nothing written
