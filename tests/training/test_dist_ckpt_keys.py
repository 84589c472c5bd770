"""dist_ckpt.load_sharded reads megatron's (state, missing, unexpected) in the right order: a key asked for that
the checkpoint lacks is an error naming it (an `_extra_state` one keeps its value); a key the checkpoint has and
nobody asked for is left out with a warning naming it (optimizer keys are not warned about when only weights
were asked for)."""

from __future__ import annotations

import logging
from pathlib import Path


def keys_case(workdir: str) -> dict:
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from vffn_pretrain.training import dist_ckpt

    def sharded(key, value):
        return ShardedTensor.from_rank_offsets(key, torch.full((2,), float(value)))

    ckpt = Path(workdir) / "ckpt"
    ckpt.mkdir()
    dist_checkpointing.save({"w": sharded("decoder.w", 1), "extra": sharded("decoder.extra", 2),
                             "opt": sharded("optimizer.state.exp_avg.decoder.w", 3)}, str(ckpt))
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    dist_ckpt.log.addHandler(handler)
    out = {}
    try:
        loaded = dist_ckpt.load_sharded({"w": sharded("decoder.w", 0)}, ckpt)
        out["value"], out["warnings"] = loaded["w"].tolist(), list(warnings)
        try:
            dist_ckpt.load_sharded({"w": sharded("decoder.w", 0), "new": sharded("decoder.new", 0)}, ckpt)
        except KeyError as e:
            out["lacking"] = str(e)
        kept = dist_ckpt.load_sharded({"w": sharded("decoder.w", 0),
                                       "x": sharded("decoder.norm._extra_state", 5)}, ckpt)
        out["extra_state_left_out"] = "x" not in kept and kept["w"].tolist() == [1.0, 1.0]
    finally:
        dist_ckpt.log.removeHandler(handler)
    return out


def test_lacking_keys_fail_and_unused_keys_warn(rank_pools, tmp_path):
    out = rank_pools(1).run(keys_case, str(tmp_path))[0]
    assert out["value"] == [1.0, 1.0]
    assert len(out["warnings"]) == 1 and "decoder.extra" in out["warnings"][0]
    assert "optimizer" not in out["warnings"][0]  # only weights were asked for
    assert "has no decoder.new" in out["lacking"] and "decoder.extra" not in out["lacking"]
    assert out["extra_state_left_out"]  # no error: the module keeps its own
