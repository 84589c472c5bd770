"""DataConfig: defaults match conf/data/default.yaml; bad values name the key as data.<key>."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vffn_pretrain.data.config import BUNDLED, DataConfig, parse_blend

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "conf" / "data" / "default.yaml"


def test_yaml_defaults_are_the_dataclass_defaults_and_point_at_the_bundled_corpus():
    cfg = DataConfig.from_dict(OmegaConf.load(DEFAULT_YAML))
    assert cfg == DataConfig()
    assert cfg.paths is None and cfg.tokenizer is None
    assert cfg.blends() == (([BUNDLED], None), None)
    assert cfg.split == "969,30,1"


def test_blends():
    assert parse_blend("/d/web.bin") == (["/d/web"], None)
    assert parse_blend(["/a", "/b.idx"]) == (["/a", "/b"], None)
    assert parse_blend([0.3, "/a", "7", "/b"]) == (["/a", "/b"], [0.3, 7.0])
    cfg = DataConfig.from_dict({"train_paths": "/t", "valid_paths": [1, "/v1", 2, "/v2"]})
    assert cfg.blends() == (None, [(["/t"], None), (["/v1", "/v2"], [1.0, 2.0]), None])
    assert DataConfig.from_dict(OmegaConf.create({"paths": [1, BUNDLED, 1, "/x"]})).blends()[0] == (
        [BUNDLED, "/x"], [1.0, 1.0])


@pytest.mark.parametrize("values, key", [
    ({"nope": 1}, "data.nope"),
    ({"split": "a,b"}, "data.split"),
    ({"split": "1,2,3,4"}, "data.split"),
    ({"split": "0,0,0"}, "data.split"),
    ({"split": "90,-5,15"}, "data.split"),
    ({"split": 969}, "data.split"),
    ({"paths": [0.5, "/a", "/b"]}, "data.paths"),
    ({"paths": [0.5, "/a", 0.5]}, "data.paths"),
    ({"paths": [-1, "/a"]}, "data.paths"),
    ({"paths": [0, "/a", 1, "/b"]}, "data.paths"),
    ({"paths": []}, "data.paths"),
    ({"paths": 3}, "data.paths"),
    ({"paths": ""}, "data.paths"),
    ({"paths": "/a", "train_paths": "/b"}, "data.paths"),
    ({"valid_paths": "/b"}, "data.train_paths"),
    ({"train_paths": [1, "/a", "/b"]}, "data.train_paths"),
    ({"tokenizer": ""}, "data.tokenizer"),
    ({"tokenizer": 5}, "data.tokenizer"),
    ({"cache_dir": ""}, "data.cache_dir"),
    ({"num_workers": -1}, "data.num_workers"),
    ({"num_workers": 1.5}, "data.num_workers"),
    ({"num_workers": True}, "data.num_workers"),
    ({"check_token_ids": "yes"}, "data.check_token_ids"),
    ({"seed": -1}, "data.seed"),
    ({"eod_mask_loss": 1}, "data.eod_mask_loss"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ValueError) as err:
        DataConfig.from_dict(values)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_the_memory_limit_is_the_lowest_of_the_machine_and_its_control_groups(tmp_path):
    """What plan_splits compares megatron-core's index memory with: a SLURM job's or container's limit
    (cgroup v2 memory.max of the group or a group above it; v1 memory.limit_in_bytes) when below RAM."""
    from vffn_pretrain.data.checks import memory_limit

    v2 = tmp_path / "v2"
    (v2 / "slurm" / "job_7").mkdir(parents=True)
    (v2 / "slurm" / "memory.max").write_text("4000000000\n")
    (v2 / "slurm" / "job_7" / "memory.max").write_text("max\n")
    (tmp_path / "cg2").write_text("0::/slurm/job_7\n")
    assert memory_limit(tmp_path / "cg2", v2, physical=16 * 2**30) == 4_000_000_000
    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text("2000000000")
    (tmp_path / "cg1").write_text("4:memory:/docker/abc\n3:cpuset:/\n")
    assert memory_limit(tmp_path / "cg1", v1, physical=16 * 2**30) == 2_000_000_000
    assert memory_limit(tmp_path / "nowhere", v1, physical=16 * 2**30) == 16 * 2**30
    (tmp_path / "cg3").write_text("0::/\n")
    assert memory_limit(tmp_path / "cg3", tmp_path / "empty", physical=8 * 2**30) == 8 * 2**30
