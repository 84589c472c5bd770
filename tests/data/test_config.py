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
