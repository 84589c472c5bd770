"""A mixed model (ffn.layers) in the real trainer: PP=2 computes the single-rank losses (fp32, 1e-5 relative); a
PP=2 checkpoint (per-layer keys) resumes on one rank with the uninterrupted losses; a dense checkpoint converts
into it (train.init_from) layer by layer; the summary's size is the counted one."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training import trainer_runs as cases
from vffn_pretrain.model import counting

PATTERN = "ffn.layers='dense,versatile*3'"


def _overrides(synthetic_data, tmp, name, *extra):
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp / 'cache'}",
            f"run_dir={tmp / name}", "checkpoint.interval=1000", PATTERN, *extra]


@pytest.fixture(scope="module")
def single(rank_pools, synthetic_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    return rank_pools(1).run(cases.train, _overrides(synthetic_data, tmp, "single", "train.max_steps=3"))[0]


def test_pp2_matches_single_rank_and_counts(rank_pools, synthetic_data, tmp_path, single):
    ref = [single["losses"][s] for s in (1, 2, 3)]
    pp2 = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "pp2", "train.max_steps=3",
                                                    "parallel.pp=2"))[0]
    np.testing.assert_allclose([pp2["losses"][s] for s in (1, 2, 3)], ref, rtol=1e-5)
    cfg = cases.run_config(_overrides(synthetic_data, tmp_path, "x"))
    shape = counting.ModelShape(4, 64, 256, 4, None, cfg.model.padded_vocab_size(), 32)
    ffns = cfg.ffn.counting_shape(4)
    assert [f.kind for f in ffns] == ["dense", "versatile", "versatile", "versatile"]
    assert single["summary"]["params_total"] == counting.count_params(shape, ffns)["params_total"]
    assert single["summary"]["flops_per_token_train"] == counting.flops_per_token(shape, ffns, training=True)


def test_pp2_checkpoint_resumes_on_one_rank(rank_pools, synthetic_data, tmp_path, single):
    first = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "r", "train.max_steps=3",
                                                      "train.exit_interval=2", "parallel.pp=2"))[0]
    assert first["summary"]["steps"] == 2
    resumed = rank_pools(1).run(cases.train, _overrides(synthetic_data, tmp_path, "r", "train.max_steps=3"))[0]
    assert resumed["summary"]["steps"] == 3
    np.testing.assert_allclose(resumed["losses"][3], single["losses"][3], rtol=1e-5)


def test_dense_checkpoint_converts_into_the_mixed_model(rank_pools, synthetic_data, tmp_path):
    dense = _overrides(synthetic_data, tmp_path, "dense", "train.max_steps=2")[:-2] + ["ffn=dense",
                                                                                        "train.max_steps=2"]
    assert rank_pools(1).run(cases.train, dense)[0]["exit_code"] == 0
    ckpt = str(tmp_path / "dense" / "checkpoints")
    base = [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={tmp_path / 'conv'}"]
    out = rank_pools(1).run(cases.converted_logits, base, ckpt, "versatile",
                            ("ffn.layers='dense,versatile*2,depth_only'", "ffn.max_loops=3"))[0]
    assert np.abs(out["dense"]).max() > 0
    np.testing.assert_allclose(out["versatile"], out["dense"], rtol=1e-5, atol=1e-5)
